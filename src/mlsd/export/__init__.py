"""Export: one ONNX graph for the whole inference path, and the parity gate that guards it."""

from mlsd.export.onnx_graph import SCORE_OUTPUT, onnx_feeds, onnx_scores, session, signature, to_onnx
from mlsd.export.parity import parity_failure, parity_report
from mlsd.export.retrieval_graph import (
    RETRIEVAL_OUTPUTS,
    retrieval_feeds,
    retrieval_parity,
    retrieval_to_onnx,
)

__all__ = [
    "RETRIEVAL_OUTPUTS",
    "SCORE_OUTPUT",
    "onnx_feeds",
    "onnx_scores",
    "parity_failure",
    "parity_report",
    "retrieval_feeds",
    "retrieval_parity",
    "retrieval_to_onnx",
    "session",
    "signature",
    "to_onnx",
]
