"""The parity gate: the ONNX graph must give the native model's scores, row for row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsd.export.onnx_graph import SCORE_OUTPUT, onnx_feeds, onnx_scores, session
from mlsd.spec import ModelInput


def native_scores(pipeline: Any, frame: pd.DataFrame) -> np.ndarray:
    """A fitted model's score per row: ``predict_score`` where it has one (an uplift model's
    effect), else P(label = 1) from ``predict_proba``."""
    if hasattr(pipeline, "predict_score"):
        return np.asarray(pipeline.predict_score(frame), dtype=np.float64)
    return np.asarray(pipeline.predict_proba(frame)[:, 1], dtype=np.float64)


def parity_report(
    model: Any,
    pipeline: Any,
    inputs: list[ModelInput],
    frame: pd.DataFrame,
    *,
    tolerance: float,
    output: str = SCORE_OUTPUT,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Compare the graph's ``output`` in ONNX Runtime with the native model's scores
    (:func:`native_scores`) on every row of ``frame``.

    Args:
        model: the ONNX ModelProto (or bytes) exported from ``pipeline``.
        pipeline: the fitted native pipeline.
        inputs: the model inputs, in graph order.
        frame: a model frame (see ``mlsd.training.model_frame``) of at least the rows to check.
        tolerance: the largest absolute score difference that still passes.
        output: the graph output holding the score (default: a classifier's probabilities).
        classes: a multi-label graph's classes: ``output`` is ``[N, classes]``, compared column
            by column (the report adds ``per_label`` max differences).

    Returns:
        JSON-ready ``{"rows", "tolerance", "max_abs_diff", "mean_abs_diff", "rows_over", "worst_row",
        "passed"}``; a graph that will not run at all reports ``passed: False`` and its error.
    """
    native = native_scores(pipeline, frame)
    try:
        feeds = onnx_feeds(inputs, frame)
        if classes is None:
            exported = onnx_scores(session(model), feeds, output)
        else:
            exported = np.asarray(session(model).run([output], feeds)[0]).reshape(native.shape)
    except Exception as exc:  # ORT's errors (bad graph, wrong input names) are its own types
        return {"rows": len(frame), "tolerance": tolerance, "passed": False, "error": str(exc)}
    full = np.abs(exported.astype(np.float64) - native)
    per_label = {} if classes is None else {c: float(full[:, j].max()) for j, c in enumerate(classes)}
    diff = full.reshape(len(frame), -1).max(axis=1)
    native, exported = native.reshape(len(frame), -1), exported.reshape(len(frame), -1)
    worst = int(np.argmax(diff))
    column = int(np.argmax(full.reshape(len(frame), -1)[worst]))
    native, exported = native[:, column], exported[:, column]
    return {
        **({"per_label": per_label} if classes is not None else {}),
        "rows": len(frame),
        "tolerance": tolerance,
        "max_abs_diff": float(diff[worst]),
        "mean_abs_diff": float(diff.mean()),
        "rows_over": int((diff > tolerance).sum()),
        "worst_row": {"index": worst, "native": float(native[worst]), "onnx": float(exported[worst])},
        "passed": bool(diff[worst] <= tolerance),
    }


def parity_failure(report: dict[str, Any]) -> str | None:
    """One line saying why parity failed, with the numbers; None when it passed."""
    if report["passed"]:
        return None
    if "error" in report:
        return f"parity: the ONNX graph does not run on the model inputs: {report['error']}"
    worst = report["worst_row"]
    return (
        f"parity: max |onnx - native| = {report['max_abs_diff']:.3g} > {report['tolerance']:g} "
        f"on {report['rows_over']} of {report['rows']} rows (worst row {worst['index']}: "
        f"native {worst['native']:.6f}, onnx {worst['onnx']:.6f})"
    )
