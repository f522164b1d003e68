"""Offline metrics for retrieval: ranked item lists per user against the items each user engaged with.

A retrieval metric is ``(ranked, relevant, k) -> float``: ``ranked`` is ``[users, >= k]`` item ids
best first, ``relevant`` one array of relevant item ids per user (binary relevance: an item is
relevant when the user engaged with it in the holdout). Each metric is the mean over users with
at least one relevant item. They live in their own registry, :data:`RETRIEVAL_METRICS`, so the
names (``ndcg_at_k``...) never collide with metrics of pointwise tasks in ``METRICS``.

The report mirrors the binary one: metrics of model, baseline and oracle (a ranking by the
generator's true rates), gaps to the oracle, and the spec's gates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlsd.errors import SpecError
from mlsd.evaluation.gates import judge
from mlsd.evaluation.report import REQUIRED_SCORERS
from mlsd.spec import MetricSpec

RetrievalMetric = Callable[..., float]


def _hits(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[users, k]`` 0/1 hits of the top k, and each user's relevant count (users with none dropped).

    Raises:
        ValueError: shapes disagree, k is out of range, or no user has a relevant item.
    """
    ranked = np.asarray(ranked)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if ranked.ndim != 2 or len(ranked) != len(relevant):
        raise ValueError(
            f"ranked must be [users, k] with one row per relevant set; got shape {ranked.shape} "
            f"for {len(relevant)} users"
        )
    if ranked.shape[1] < k:
        raise ValueError(f"ranked lists hold {ranked.shape[1]} items, fewer than k={k}; retrieve at least k")
    counts = np.array([len(r) for r in relevant])
    keep = counts > 0
    if not keep.any():
        raise ValueError("no user has a relevant item; evaluate on a holdout with engagement")
    hits = np.array([np.isin(row[:k], rel) for row, rel in zip(ranked, relevant, strict=True)], dtype=float)
    return hits[keep], counts[keep]


def precision_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> float:
    """Share of the top k that is relevant."""
    hits, _ = _hits(ranked, relevant, k)
    return float(hits.mean())


def recall_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> float:
    """Share of a user's relevant items found in the top k."""
    hits, counts = _hits(ranked, relevant, k)
    return float(np.mean(hits.sum(axis=1) / counts))


def map_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> float:
    """Mean average precision: the precision at each hit's rank, summed, over min(relevant, k)."""
    hits, counts = _hits(ranked, relevant, k)
    precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    return float(np.mean((precision * hits).sum(axis=1) / np.minimum(counts, k)))


def ndcg_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> float:
    """Normalized discounted cumulative gain with binary gains: DCG over the ideal DCG, which puts
    min(relevant, k) hits first."""
    hits, counts = _hits(ranked, relevant, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(counts, k) - 1]
    return float(np.mean((hits * discount).sum(axis=1) / ideal))


def mrr_at_k(ranked: np.ndarray, relevant: Sequence[np.ndarray], k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant item in the top k (0 when none is)."""
    hits, _ = _hits(ranked, relevant, k)
    first = hits.argmax(axis=1)
    return float(np.mean(np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)))


RETRIEVAL_METRICS: dict[str, RetrievalMetric] = {
    "mrr_at_k": mrr_at_k,
    "precision_at_k": precision_at_k,
    "recall_at_k": recall_at_k,
    "map_at_k": map_at_k,
    "ndcg_at_k": ndcg_at_k,
}
"""Every retrieval metric a spec may name, by short name."""


def check_retrieval_metrics(metrics: Sequence[MetricSpec]) -> None:
    """Fail before training if a metric is not a retrieval metric or its params do not fit.

    Raises:
        SpecError: naming the metric and the known names (or the accepted params).
    """
    for metric in metrics:
        fn = RETRIEVAL_METRICS.get(metric.name)
        if fn is None:
            raise SpecError(
                f"metrics: {metric.name!r} is not a retrieval metric; use one of {sorted(RETRIEVAL_METRICS)}"
            )
        try:
            inspect.signature(fn).bind(np.empty((0, 0)), [], **metric.params)
        except TypeError as exc:
            raise SpecError(
                f"metrics.{metric.name}.params: {sorted(metric.params)} do not fit ({exc}); it takes k"
            ) from exc


def metric_k(metrics: Sequence[MetricSpec]) -> int:
    """The longest list any metric reads (its ``k``, default 10)."""
    return max(int(m.params.get("k", 10)) for m in metrics)


def retrieval_report(
    metrics: Sequence[MetricSpec],
    relevant: Sequence[np.ndarray],
    ranked: Mapping[str, np.ndarray],
    *,
    holdout: Mapping[str, Any],
    candidates: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics of every scorer's ranked lists, gaps to the oracle and gates, as a JSON-ready dict.

    Args:
        metrics: the spec's metrics (retrieval names, direction, gates).
        relevant: per holdout user, the items the user engaged with.
        ranked: per scorer (``model``, ``baseline``, ``oracle``), ``[users, >= k]`` item ids.
        holdout: what the holdout is, copied into the report.
        candidates: a two-stage problem's first-stage lists per scorer, what metrics with
            ``stage: candidates`` read (the others read ``ranked``).

    Raises:
        ValueError: a scorer is missing or its lists are unusable (named).
    """
    staged = [m.name for m in metrics if m.stage is not None]
    if staged and candidates is None:
        raise ValueError(f"metrics {staged} score the first stage; pass its lists as candidates")
    lists = {"ranked": ranked, "candidates": candidates or {}}
    for name, by_scorer in lists.items():
        missing = [s for s in REQUIRED_SCORERS if s not in by_scorer]
        if missing and (name == "ranked" or staged):
            raise ValueError(f"{name} lacks {missing}; pass all of {list(REQUIRED_SCORERS)}")
    check_retrieval_metrics(metrics)
    values: dict[str, dict[str, float]] = {}
    for scorer in ranked:
        values[scorer] = {}
        for m in metrics:
            source = "ranked" if m.stage is None else "candidates"
            try:
                values[scorer][m.name] = RETRIEVAL_METRICS[m.name](
                    lists[source][scorer], relevant, **m.params
                )
            except ValueError as exc:
                raise ValueError(f"{source}[{scorer!r}]: {exc}") from exc
    users = sum(len(r) > 0 for r in relevant)
    pairs = int(sum(len(r) for r in relevant))
    return {"holdout": {**holdout, "users": users, "relevant_items": pairs}, **judge(metrics, values)}
