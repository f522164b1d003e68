"""Multi-label evaluation: every pointwise binary metric, averaged over classes two ways.

A multi-label spec names ``macro_<metric>`` (the metric on each class, then the plain mean: every
class counts the same, the rare ones included) or ``micro_<metric>`` (the metric on every
(row, class) pair pooled: frequent classes dominate) for any pointwise metric of
:data:`mlsd.evaluation.metrics.METRICS` (``macro_pr_auc``, ``micro_f1`` ...). The report has the
per-class value of each named base metric beside the averages, for model, baseline and oracle,
and the spec's gates judge the averages.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlsd.errors import SpecError
from mlsd.evaluation.gates import judge
from mlsd.evaluation.metrics import METRICS, Metric, needs_groups
from mlsd.spec import MetricSpec

AVERAGES = ("macro", "micro")


def _base(metric: MetricSpec) -> tuple[str, Metric]:
    """``(average, base metric)`` of a multi-label metric name.

    Raises:
        SpecError: the name is not ``macro_``/``micro_`` + a pointwise metric, or its params do
            not fit the base metric.
    """
    average, _, base = metric.name.partition("_")
    fn = METRICS.get(base)
    if average not in AVERAGES or fn is None or needs_groups(fn):
        pointwise = sorted(n for n, f in METRICS.items() if not needs_groups(f))
        raise SpecError(
            f"metrics: {metric.name!r} is not a multi-label metric; use macro_<metric> or "
            f"micro_<metric> with <metric> one of {pointwise}"
        )
    try:
        inspect.signature(fn).bind(np.empty(0), np.empty(0), **metric.params)
    except TypeError as exc:
        raise SpecError(
            f"metrics.{metric.name}.params: {sorted(metric.params)} do not fit {base} ({exc})"
        ) from exc
    return average, fn


def check_multilabel_metrics(metrics: Sequence[MetricSpec]) -> None:
    """Fail before training if a metric is not ``macro_``/``micro_`` + a pointwise metric.

    Raises:
        SpecError: naming the metric and the accepted names.
    """
    for metric in metrics:
        _base(metric)


def _matrices(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(
            f"multi-label metrics take [rows, classes] labels and scores of one shape, got "
            f"{labels.shape} and {scores.shape}"
        )
    return labels, scores


def multilabel_metric(metric: MetricSpec, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """One ``macro_``/``micro_`` metric of ``[rows, classes]`` labels and scores."""
    average, fn = _base(metric)
    labels, scores = _matrices(y_true, y_score)
    if average == "micro":
        return float(fn(labels.ravel(), scores.ravel(), **metric.params))
    return float(np.mean([fn(labels[:, j], scores[:, j], **metric.params) for j in range(labels.shape[1])]))


def per_label(
    metrics: Sequence[MetricSpec], classes: Sequence[str], y_true: np.ndarray, y_score: np.ndarray
) -> dict[str, dict[str, float]]:
    """Each base metric the spec averages, on each class: ``{class: {base metric: value}}``."""
    labels, scores = _matrices(y_true, y_score)
    bases = {m.name.partition("_")[2]: m.params for m in metrics}
    return {
        c: {b: float(METRICS[b](labels[:, j], scores[:, j], **params)) for b, params in bases.items()}
        for j, c in enumerate(classes)
    }


def multilabel_report(
    metrics: Sequence[MetricSpec],
    classes: Sequence[str],
    y_true: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    holdout: Mapping[str, Any],
) -> dict[str, Any]:
    """Averaged metrics, gaps to the oracle and gates (:func:`mlsd.evaluation.gates.judge`), plus
    ``per_label`` values per scorer and the holdout's positives per class, JSON-ready.

    Args:
        metrics: the spec's ``macro_``/``micro_`` metrics.
        classes: the spec's ``label.classes``, in column order.
        y_true: ``[rows, classes]`` 0/1 labels.
        scores: ``[rows, classes]`` scores of ``model``, ``baseline`` and ``oracle`` (at least).
        holdout: what the holdout is, copied into the report.
    """
    labels = np.asarray(y_true)
    values = {
        s: {m.name: multilabel_metric(m, labels, score) for m in metrics} for s, score in scores.items()
    }
    positives = labels.sum(axis=0)
    return {
        "holdout": {
            **holdout,
            "rows": len(labels),
            "positives": int(positives.sum()),
            "base_rate": float(labels.mean()),
            "positives_per_label": {c: int(n) for c, n in zip(classes, positives, strict=True)},
        },
        **judge(metrics, values),
        "per_label": {s: per_label(metrics, classes, labels, score) for s, score in scores.items()},
    }
