"""Export: one ONNX graph for the whole inference path, and the parity gate that guards it."""

from mlsd.export.onnx_graph import SCORE_OUTPUT, onnx_feeds, onnx_scores, session, signature, to_onnx
from mlsd.export.parity import parity_failure, parity_report

__all__ = [
    "SCORE_OUTPUT",
    "onnx_feeds",
    "onnx_scores",
    "parity_failure",
    "parity_report",
    "session",
    "signature",
    "to_onnx",
]
