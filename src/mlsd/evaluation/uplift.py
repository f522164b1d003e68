"""Offline metrics for uplift under a budget: who should get the treatment (a coupon), and is it
worth what it costs?

The holdout is a randomized experiment: each row was treated or not by chance, so comparing the
treated and control rows a model ranks first estimates how much the treatment adds there. Two
families of metrics read it:

- **observed** (what a real campaign log allows): the Qini and uplift curves, ranking rows by a
  score and counting the conversions treatment added in the top of the ranking (:func:`qini`,
  :func:`auuc`);
- **against the truth** (what the generator's per-row effect ``tau`` allows): a budgeted greedy
  allocation (:func:`allocate`) by the score per unit cost, and the true incremental conversions
  it buys as a share of what the same greedy buys ranked by the true effect, the oracle
  allocation (:func:`incremental_share`), plus the share of the budget it spends
  (:func:`budget_used`).

Every metric is ``(holdout, score, **params) -> float`` over an :class:`UpliftHoldout`; they live
in :data:`UPLIFT_METRICS`, and :func:`uplift_report` mirrors the binary report (model, baseline and
oracle side by side, gaps, gates).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsd.errors import SpecError
from mlsd.evaluation.gates import judge
from mlsd.evaluation.report import REQUIRED_SCORERS
from mlsd.spec import MetricSpec


@dataclass(frozen=True)
class UpliftHoldout:
    """One randomized holdout: per row the outcome, whether it was treated, the true effect and
    what treating it costs, plus the campaign budget (in cost units).

    Raises:
        ValueError: lengths differ, treatment is not 0/1, a cost is not positive, or one arm is
            empty (then no effect can be estimated).
    """

    y: np.ndarray
    treated: np.ndarray
    tau: np.ndarray
    cost: np.ndarray
    budget: float

    def __post_init__(self) -> None:
        n = len(self.y)
        if not all(len(a) == n for a in (self.treated, self.tau, self.cost)):
            raise ValueError("y, treated, tau and cost must have one value per holdout row")
        if not np.isin(self.treated, (0, 1)).all() or not np.isin(self.y, (0, 1)).all():
            raise ValueError("treated and y must be 0/1")
        if (np.asarray(self.cost) <= 0).any():
            raise ValueError("every cost must be positive; a free treatment needs no budget")
        if self.treated.sum() in (0, n):
            raise ValueError("the holdout needs treated and control rows (a randomized experiment)")
        if self.budget <= 0:
            raise ValueError(f"budget must be positive, got {self.budget}")

    @classmethod
    def from_share(cls, y: Any, treated: Any, tau: Any, cost: Any, budget_share: float) -> UpliftHoldout:
        """A holdout whose budget is ``budget_share`` of the cost of treating every row."""
        cost = np.asarray(cost, dtype=np.float64)
        return cls(
            np.asarray(y, dtype=np.int64),
            np.asarray(treated, dtype=np.int64),
            np.asarray(tau, dtype=np.float64),
            cost,
            float(budget_share * cost.sum()),
        )


def _curve(holdout: UpliftHoldout, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ranked by ``score`` (best first), cut only between tie groups: the share of rows
    targeted (0 first), and at each cut the cumulative treated and control counts and the treated
    and control conversions, ``[4, cuts]``.

    Cutting inside a tie would make the curve depend on the order of tied rows; cutting between
    tie groups (and interpolating linearly between cuts) gives every order of a tie the same area.
    """
    score = np.asarray(score, dtype=np.float64)
    if len(score) != len(holdout.y) or not np.isfinite(score).all():
        raise ValueError(f"score must hold {len(holdout.y)} finite values, got {len(score)}")
    order = np.argsort(-score, kind="stable")
    s, t, y = score[order], holdout.treated[order], holdout.y[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    counts = np.stack([np.cumsum(c)[ends] for c in (t, 1 - t, y * t, y * (1 - t))])
    return np.r_[0.0, (ends + 1) / len(s)], counts


def _area(x: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area under ``values`` (which starts at 0 at x = 0) over x in [0, 1]."""
    v = np.r_[0.0, values]
    return float(np.sum((x[1:] - x[:-1]) * (v[1:] + v[:-1]) / 2))


def qini(holdout: UpliftHoldout, score: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, per row of the holdout.

    The Qini curve at the top k rows is ``Y_t(k) - Y_c(k) N_t(k) / N_c(k)``: the treated
    conversions minus the control conversions scaled to the treated count (the conversions the
    treatment added there), divided by the holdout's rows. Random targeting adds them in
    proportion, the straight line to the full-population value; positive is better than random.
    """
    x, (nt, nc, yt, yc) = _curve(holdout, score)
    n = len(holdout.y)
    gain = (yt - yc * np.divide(nt, nc, out=np.zeros_like(nt, dtype=float), where=nc > 0)) / n
    return _area(x, gain) - gain[-1] / 2


def auuc(holdout: UpliftHoldout, score: np.ndarray) -> float:
    """Area under the uplift curve: at the top k rows, the difference of the treated and control
    conversion rates times k / n (the effect per holdout row of treating the top k), over [0, 1].

    Where one arm has no rows yet the rate difference is taken as 0.
    """
    x, (nt, nc, yt, yc) = _curve(holdout, score)
    both = (nt > 0) & (nc > 0)
    rates = np.where(both, yt / np.maximum(nt, 1) - yc / np.maximum(nc, 1), 0.0)
    return _area(x, rates * x[1:])


def allocate(score: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Greedy knapsack: treat rows by ``score / cost``, best first, while the budget lasts.

    Rows whose score is not positive are never treated (a coupon that is not expected to add a
    conversion is money lost); the first row that no longer fits ends the campaign, so the
    allocation is a prefix of the ranking. Ties keep row order.

    Returns:
        Boolean mask of treated rows.
    """
    score, cost = np.asarray(score, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    ratio = score / cost
    order = np.argsort(-ratio, kind="stable")
    order = order[ratio[order] > 0]
    fits = np.cumsum(cost[order]) <= budget * (1 + 1e-12)
    stop = len(order) if fits.all() else int(np.argmin(fits))
    chosen = np.zeros(len(score), dtype=bool)
    chosen[order[:stop]] = True
    return chosen


def incremental_share(holdout: UpliftHoldout, score: np.ndarray) -> float:
    """True incremental conversions of the budgeted allocation by ``score``, as a share of the
    oracle allocation's (the same greedy ranked by the true effect; 1 is the best greedy can do)."""
    oracle = holdout.tau[allocate(holdout.tau, holdout.cost, holdout.budget)].sum()
    if oracle <= 0:
        raise ValueError("no row has a positive true effect within the budget; nothing to allocate")
    return float(holdout.tau[allocate(score, holdout.cost, holdout.budget)].sum() / oracle)


def budget_used(holdout: UpliftHoldout, score: np.ndarray) -> float:
    """Share of the budget the allocation by ``score`` spends (below 1: too few rows looked worth it)."""
    return float(holdout.cost[allocate(score, holdout.cost, holdout.budget)].sum() / holdout.budget)


UpliftMetric = Callable[..., float]

UPLIFT_METRICS: dict[str, UpliftMetric] = {
    "qini": qini,
    "auuc": auuc,
    "incremental_share": incremental_share,
    "budget_used": budget_used,
}
"""Every uplift metric a spec may name, by short name."""


def check_uplift_metrics(metrics: Sequence[MetricSpec]) -> None:
    """Fail before training if a metric is not an uplift metric or its params do not fit.

    Raises:
        SpecError: naming the metric and the known names.
    """
    for metric in metrics:
        fn = UPLIFT_METRICS.get(metric.name)
        if fn is None:
            raise SpecError(
                f"metrics: {metric.name!r} is not an uplift metric; use one of {sorted(UPLIFT_METRICS)}"
            )
        try:
            inspect.signature(fn).bind(None, None, **metric.params)
        except TypeError as exc:
            raise SpecError(
                f"metrics.{metric.name}.params: {sorted(metric.params)} do not fit ({exc})"
            ) from exc


def uplift_report(
    metrics: Sequence[MetricSpec],
    holdout: UpliftHoldout,
    scores: Mapping[str, np.ndarray],
    *,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Metrics of every scorer's effect estimates, gaps to the oracle and gates, JSON-ready.

    Args:
        metrics: the spec's metrics (uplift names, direction, gates).
        holdout: the randomized holdout with its true effects and costs.
        scores: per scorer (``model``, ``baseline``, ``oracle``), the estimated effect per row.
        info: what the holdout is (e.g. its time window), copied into the report.

    Raises:
        ValueError: a scorer is missing or its scores are unusable (named).
    """
    missing = [s for s in REQUIRED_SCORERS if s not in scores]
    if missing:
        raise ValueError(f"scores lacks {missing}; pass all of {list(REQUIRED_SCORERS)}")
    check_uplift_metrics(metrics)
    values: dict[str, dict[str, float]] = {}
    for scorer, score in scores.items():
        try:
            values[scorer] = {m.name: UPLIFT_METRICS[m.name](holdout, score, **m.params) for m in metrics}
        except ValueError as exc:
            raise ValueError(f"scores[{scorer!r}]: {exc}") from exc
    treated = holdout.treated == 1
    summary = {
        **info,
        "rows": len(holdout.y),
        "treated": int(treated.sum()),
        "conversion_treated": float(holdout.y[treated].mean()),
        "conversion_control": float(holdout.y[~treated].mean()),
        "mean_true_effect": float(holdout.tau.mean()),
        "budget": holdout.budget,
    }
    return {"holdout": summary, **judge(metrics, values)}
