"""Offline metrics for retrieval: ranked item lists per user against the items each user engaged with.

A retrieval metric is ``(ranked, relevant, k) -> float``: ``ranked`` is ``[users, >= k]`` item ids
best first, ``relevant`` one array of relevant item ids per user (binary relevance: an item is
relevant when the user engaged with it in the holdout). Each metric is the mean over users with
at least one relevant item. They live in their own registry, :data:`RETRIEVAL_METRICS`, so the
names (``ndcg_at_k``...) never collide with metrics of pointwise tasks in ``METRICS``.

An answer-or-escalate problem (support Q&A) adds **decision metrics**,
``(ranked, relevant, answered) -> float`` over every query, those with no relevant item too (they
are the ones a person must handle): :data:`DECISION_METRICS`.

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


def _decisions(
    ranked: np.ndarray, relevant: Sequence[np.ndarray], answered: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: the top item is relevant, the query has a relevant item, the query was answered.

    Raises:
        ValueError: shapes disagree or there are no queries.
    """
    ranked, answered = np.asarray(ranked), np.asarray(answered, dtype=bool)
    shaped = ranked.ndim == 2 and ranked.shape[1] >= 1 and len(ranked) == len(relevant)
    if not shaped or answered.shape != (len(relevant),):
        raise ValueError(
            f"decision metrics take ranked [queries, >= 1], one relevant set and one answered flag per "
            f"query; got ranked {ranked.shape}, {len(relevant)} relevant sets, answered {answered.shape}"
        )
    if len(relevant) == 0:
        raise ValueError("no queries to judge")
    right = np.array([row[0] in rel for row, rel in zip(ranked, relevant, strict=True)], dtype=bool)
    answerable = np.array([len(rel) > 0 for rel in relevant], dtype=bool)
    return right, answerable, answered


def containment_rate(ranked: np.ndarray, relevant: Sequence[np.ndarray], answered: np.ndarray) -> float:
    """Share of all queries answered with a relevant top item: resolved without a person."""
    right, _, answered = _decisions(ranked, relevant, answered)
    return float(np.mean(right & answered))


def escalation_precision(ranked: np.ndarray, relevant: Sequence[np.ndarray], answered: np.ndarray) -> float:
    """Share of escalated queries that had no relevant item (a person was needed); 0 when none was
    escalated (nothing a person needed was caught)."""
    _, answerable, answered = _decisions(ranked, relevant, answered)
    escalated = ~answered
    return float(np.mean(~answerable[escalated])) if escalated.any() else 0.0


def wrong_answer_rate(ranked: np.ndarray, relevant: Sequence[np.ndarray], answered: np.ndarray) -> float:
    """Share of answered queries whose top item is not relevant (0 when nothing was answered)."""
    right, _, answered = _decisions(ranked, relevant, answered)
    return float(np.mean(~right[answered])) if answered.any() else 0.0


DECISION_METRICS: dict[str, RetrievalMetric] = {
    "containment_rate": containment_rate,
    "escalation_precision": escalation_precision,
    "wrong_answer_rate": wrong_answer_rate,
}
"""Metrics of the answer-or-escalate decision (a spec with ``text_retrieval.escalation``)."""


RETRIEVAL_METRICS: dict[str, RetrievalMetric] = {
    "mrr_at_k": mrr_at_k,
    "precision_at_k": precision_at_k,
    "recall_at_k": recall_at_k,
    "map_at_k": map_at_k,
    "ndcg_at_k": ndcg_at_k,
}
"""Every retrieval metric a spec may name, by short name."""


def check_retrieval_metrics(metrics: Sequence[MetricSpec], *, decisions: bool = False) -> None:
    """Fail before training if a metric is not a retrieval metric (or, with ``decisions``, a
    decision metric) or its params do not fit.

    Raises:
        SpecError: naming the metric and the known names (or the accepted params).
    """
    known = {**RETRIEVAL_METRICS, **(DECISION_METRICS if decisions else {})}
    if metrics and metrics[0].name in DECISION_METRICS:
        raise SpecError(
            f"metrics[0]: {metrics[0].name!r} judges the answer-or-escalate decision, but Tune optimizes "
            "the first metric on the ranked lists; list a ranking metric (mrr_at_k ...) first"
        )
    for metric in metrics:
        fn = known.get(metric.name)
        decision = metric.name in DECISION_METRICS
        if fn is None:
            hint = "; decision metrics need text_retrieval.escalation" if decision else ""
            raise SpecError(
                f"metrics: {metric.name!r} is not a retrieval metric; use one of {sorted(known)}{hint}"
            )
        args: list[Any] = [np.empty((0, 0)), [], *([np.empty(0)] if decision else [])]
        try:
            inspect.signature(fn).bind(*args, **metric.params)
        except TypeError as exc:
            takes = "no params" if decision else "k"
            raise SpecError(
                f"metrics.{metric.name}.params: {sorted(metric.params)} do not fit ({exc}); it takes {takes}"
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
    answered: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics of every scorer's ranked lists, gaps to the oracle and gates, as a JSON-ready dict.

    Args:
        metrics: the spec's metrics (retrieval names, direction, gates).
        relevant: per holdout user, the items the user engaged with.
        ranked: per scorer (``model``, ``baseline``, ``oracle``), ``[users, >= k]`` item ids.
        holdout: what the holdout is, copied into the report.
        candidates: a two-stage problem's first-stage lists per scorer, what metrics with
            ``stage: candidates`` read (the others read ``ranked``).
        answered: an answer-or-escalate problem's decisions per scorer (``[users]`` bool: answered
            with the top item), what the decision metrics read with ``ranked``.

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
    check_retrieval_metrics(metrics, decisions=answered is not None)
    values: dict[str, dict[str, float]] = {}
    for scorer in ranked:
        values[scorer] = {}
        for m in metrics:
            source = "ranked" if m.stage is None else "candidates"
            try:
                if m.name in DECISION_METRICS:
                    assert answered is not None  # checked above
                    value = DECISION_METRICS[m.name](ranked[scorer], relevant, answered[scorer], **m.params)
                else:
                    value = RETRIEVAL_METRICS[m.name](lists[source][scorer], relevant, **m.params)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{source}[{scorer!r}]: {exc}") from exc
            values[scorer][m.name] = value
    users = sum(len(r) > 0 for r in relevant)
    pairs = int(sum(len(r) for r in relevant))
    return {"holdout": {**holdout, "users": users, "relevant_items": pairs}, **judge(metrics, values)}
