"""Export: one ONNX graph for the whole inference path, and the parity gate that guards it."""

from mlsd.export.multilabel_graph import MULTILABEL_OUTPUT, multilabel_to_onnx
from mlsd.export.onnx_graph import (
    SCORE_OUTPUT,
    onnx_feeds,
    onnx_scores,
    score_column,
    session,
    signature,
    to_onnx,
)
from mlsd.export.parity import native_scores, parity_failure, parity_report
from mlsd.export.retrieval_graph import (
    RETRIEVAL_OUTPUTS,
    retrieval_feeds,
    retrieval_parity,
    retrieval_to_onnx,
)
from mlsd.export.text_retrieval_graph import (
    ANSWER_OUTPUT,
    text_feeds,
    text_retrieval_parity,
    text_retrieval_to_onnx,
)
from mlsd.export.two_stage_graph import two_stage_to_onnx
from mlsd.export.uplift_graph import UPLIFT_OUTPUT, uplift_to_onnx

__all__ = [
    "ANSWER_OUTPUT",
    "MULTILABEL_OUTPUT",
    "RETRIEVAL_OUTPUTS",
    "SCORE_OUTPUT",
    "UPLIFT_OUTPUT",
    "multilabel_to_onnx",
    "native_scores",
    "onnx_feeds",
    "onnx_scores",
    "parity_failure",
    "parity_report",
    "retrieval_feeds",
    "retrieval_parity",
    "retrieval_to_onnx",
    "score_column",
    "session",
    "signature",
    "text_feeds",
    "text_retrieval_parity",
    "text_retrieval_to_onnx",
    "to_onnx",
    "two_stage_to_onnx",
    "uplift_to_onnx",
]
