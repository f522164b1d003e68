"""Offline metrics for binary classification (clicks, fraud), by the short names the spec uses.

A metric is a plain function ``(y_true, y_score, **params) -> float``; the spec's ``metrics``
list names them and gives their keyword arguments, so a problem can change what it measures
without code. Every metric checks its inputs first: a holdout with only one class makes AUC (and
normalized entropy) undefined, and that must fail loudly instead of reporting NaN.

A *grouped* metric (one with a ``groups`` parameter, e.g. ``ndcg_at_k``) ranks rows within each
group (a feed session, a query): the spec's ``label.group`` names the column that is passed as
``groups``. The tuning target (the first metric) must be pointwise.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np

from mlsd.errors import SpecError
from mlsd.spec import MetricSpec

Metric = Callable[..., float]
"""``(y_true, y_score, **params) -> float``: labels in {0, 1}, scores (probabilities) per row."""

EPS = 1e-15
"""Scores are clipped to [EPS, 1 - EPS] before taking logs, so one confident miss costs a lot
(-log(1e-15) ≈ 34.5) but not infinity."""


def binary_inputs(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert labels and scores: 1-D, same length, labels 0/1 with both present, finite scores.

    Returns:
        ``(y_true as int64, y_score as float64)``.

    Raises:
        ValueError: naming what is wrong; with one class, the row count and the class seen.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"y_true and y_score must be 1-D, got shapes {labels.shape} and {scores.shape}; "
            "pass one label and one score per row"
        )
    if len(labels) != len(scores):
        raise ValueError(
            f"y_true has {len(labels)} rows but y_score has {len(scores)}; score the same rows you label"
        )
    if len(labels) == 0:
        raise ValueError("y_true is empty; evaluate on a holdout with rows")
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"y_true must hold only 0 and 1, found {sorted(values)[:10]}")
    if len(values) == 1:
        (seen,) = values
        raise ValueError(
            f"y_true has {len(labels)} rows, all of class {int(seen)}; AUC and the other metrics are "
            "undefined with one class. Evaluate on a holdout with both clicks and non-clicks "
            "(a longer window or more rows)."
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"y_score has {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    return labels.astype(np.int64), scores


def _probabilities(scores: np.ndarray, metric: str) -> None:
    """Refuse scores outside [0, 1] for metrics that read them as probabilities (clipping would hide it)."""
    low, high = float(scores.min()), float(scores.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{metric} needs probabilities in [0, 1], but y_score ranges over [{low:.4g}, {high:.4g}]; "
            "pass predict_proba's positive-class column, not raw margins"
        )


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC: the chance a random click is scored above a random non-click (ranking quality)."""
    from sklearn.metrics import roc_auc_score

    labels, scores = binary_inputs(y_true, y_score)
    return float(roc_auc_score(labels, scores))


def pr_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision: area under the precision-recall curve, sensitive to the rare positive class."""
    from sklearn.metrics import average_precision_score

    labels, scores = binary_inputs(y_true, y_score)
    return float(average_precision_score(labels, scores))


def log_loss(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels, scores clipped to [1e-15, 1 - 1e-15].

    Computed here rather than with sklearn so the clipping is fixed and stated, not version-dependent.
    """
    labels, scores = binary_inputs(y_true, y_score)
    _probabilities(scores, "log_loss")
    p = np.clip(scores, EPS, 1.0 - EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def _entropy(rate: float) -> float:
    """Entropy (nats) of a Bernoulli(rate): the log loss of always predicting the base rate."""
    return -(rate * math.log(rate) + (1.0 - rate) * math.log1p(-rate))


def normalized_entropy(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Log loss divided by the entropy of the base rate (He et al. 2014, "Practical Lessons from
    Predicting Clicks on Ads at Facebook").

    1.0 means no better than predicting the base rate for everyone; lower is better. Dividing by
    the base-rate entropy makes holdouts with different click rates comparable.
    """
    labels, scores = binary_inputs(y_true, y_score)
    return log_loss(labels, scores) / _entropy(float(labels.mean()))


def calibration_bins(
    y_true: np.ndarray, y_score: np.ndarray, bins: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-frequency bins by score: the mean score, the observed click rate and the row count of each.

    Rows are sorted by score and cut into ``bins`` groups of (nearly) equal size, so every bin has
    enough rows to estimate a rate even though CTR scores pile up near 0 (equal-width bins would
    leave most rows in the first bin and the rest nearly empty). Tied scores always share a bin
    (splitting them would be arbitrary and would invent miscalibration), so heavily tied scores
    give fewer, larger bins; a constant score is one bin.

    Returns:
        ``(mean_score, observed_rate, count)``, one entry per non-empty bin, ordered by score.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    labels, scores = binary_inputs(y_true, y_score)
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    # A row's bin is set by the rank of the first row with its score, so ties never straddle bins.
    first_rank = np.searchsorted(ranked, ranked, side="left")
    bin_id = first_rank * bins // len(ranked)
    starts = np.flatnonzero(np.r_[True, bin_id[1:] != bin_id[:-1]])
    count = np.diff(np.r_[starts, len(ranked)]).astype(np.int64)
    mean_score = np.add.reduceat(ranked, starts) / count
    observed = np.add.reduceat(labels[order], starts) / count
    return mean_score, observed, count


def calibration_error(y_true: np.ndarray, y_score: np.ndarray, bins: int = 20) -> float:
    """Expected calibration error over ``bins`` equal-frequency bins: sum of n_b/N * |mean score - rate|.

    Auctions price ads by the predicted CTR itself, so a model that ranks well but is off by a
    factor is still wrong; this measures that, in absolute probability units.
    """
    _, scores = binary_inputs(y_true, y_score)
    _probabilities(scores, "calibration_error")
    mean_score, observed, count = calibration_bins(y_true, y_score, bins)
    return float(np.sum(count / count.sum() * np.abs(mean_score - observed)))


def _precision_recall(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (flag rows with score >= it)."""
    from sklearn.metrics import precision_recall_curve

    labels, scores = binary_inputs(y_true, y_score)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return precision, recall


def _fraction(value: float, name: str) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return value


def recall_at_precision(y_true: np.ndarray, y_score: np.ndarray, precision: float = 0.9) -> float:
    """The highest recall any threshold reaches while its precision is at least ``precision``; 0 when
    no threshold is that precise. Fraud teams fix how many false alarms an analyst can review and
    ask how much fraud that catches."""
    p, r = _precision_recall(y_true, y_score)
    ok = p >= _fraction(precision, "precision")
    return float(r[ok].max()) if ok.any() else 0.0


def precision_at_recall(y_true: np.ndarray, y_score: np.ndarray, recall: float = 0.8) -> float:
    """The highest precision any threshold keeps while catching at least ``recall`` of the positives:
    the cost, in false alarms, of a required catch rate."""
    p, r = _precision_recall(y_true, y_score)
    ok = r >= _fraction(recall, "recall")
    return float(p[ok].max()) if ok.any() else 0.0


def f1(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the decision score >= ``threshold``: the harmonic mean of its precision and recall
    (0 when it flags nothing right)."""
    labels, scores = binary_inputs(y_true, y_score)
    flagged = scores >= _fraction(threshold, "threshold")
    hits = int((flagged & (labels == 1)).sum())
    return 2 * hits / (int(flagged.sum()) + int(labels.sum())) if hits else 0.0


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _group_codes(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Integer codes 0..G-1 of each row's group, checked: one group per row, none missing."""
    import pandas as pd

    group_values = np.asarray(groups)
    if group_values.shape != labels.shape:
        raise ValueError(
            f"groups has shape {group_values.shape} but y_true has {labels.shape}; pass one group per row"
        )
    codes, _ = pd.factorize(group_values)
    if (codes < 0).any():
        raise ValueError(f"groups has {int((codes < 0).sum())} missing values; every row needs a group")
    return np.asarray(codes)


def _ranked_in_groups(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray,
    k: int,
    weight: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the sum of label x rank weight when rows are ranked by score, and the positives.

    Rows of a group are ranked by descending score; ``weight(rank)`` (0-based ranks) is the value
    of a slot, zero from rank ``k`` on. Tied scores share their slots: each tied row gets the mean
    weight of the slots the tie spans (the expected value over the tie's orders, as sklearn's
    ``ndcg_score`` does), so a constant scorer is not rewarded for the rows' order in the file.

    Returns:
        ``(gain, positives)``, one entry per distinct group (in order of first sorting).
    """
    _check_k(k)
    labels, scores = binary_inputs(y_true, y_score)
    codes = _group_codes(groups, labels)
    order = np.lexsort((-scores, codes))
    code, score, label = codes[order], scores[order], labels[order]
    first = np.r_[True, code[1:] != code[:-1]]
    group_start = np.flatnonzero(first)
    rank = np.arange(len(code)) - np.repeat(group_start, np.diff(np.r_[group_start, len(code)]))
    slot = np.where(rank < k, weight(rank), 0.0)
    tie = np.cumsum(first | np.r_[True, score[1:] != score[:-1]]) - 1
    tie_weight = np.bincount(tie, slot) / np.bincount(tie)
    n_groups = int(code.max()) + 1
    gain = np.bincount(code, label * tie_weight[tie], minlength=n_groups)
    return gain, np.bincount(code, label, minlength=n_groups).astype(np.int64)


def _discount(rank: np.ndarray) -> np.ndarray:
    return 1.0 / np.log2(rank + 2.0)


def ndcg_at_k(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups (e.g. feed sessions), the binary label as the gain.

    Within each group rows are ranked by score; DCG@k = sum of label / log2(rank + 1) over the
    top k (rank from 1), divided by the DCG@k of the best order (all positives first). Tied
    scores get the mean discount of the slots they span. Groups without a positive are left out
    of the mean: every order of them is equally good (their NDCG is undefined, not 0 or 1), and
    counting them would only dilute the score by the share of sessions nobody engaged in.

    Args:
        y_true: labels in {0, 1}, shape (n,).
        y_score: scores, shape (n,); higher is ranked first.
        groups: the group of each row, shape (n,), any hashable values.
        k: how many top slots count.

    Raises:
        ValueError: bad inputs (see :func:`binary_inputs`), ``groups`` of another length or with
            missing values, or ``k`` not a positive integer.
    """
    dcg, positives = _ranked_in_groups(y_true, y_score, groups, k, _discount)
    has_positive = positives > 0
    ideal = np.cumsum(_discount(np.arange(k)))[np.minimum(positives[has_positive], k) - 1]
    return float(np.mean(dcg[has_positive] / ideal))


def engagements_at_k(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean number of positives among each group's top k by score (engagements per session).

    Unlike :func:`ndcg_at_k` every group counts, those without a positive as 0: it is the
    offline analogue of "engagements per session" on the first k slots of a feed. Tied scores
    count the expected number (each tied row by the share of its tie's slots inside the top k).

    Raises:
        ValueError: as :func:`ndcg_at_k`.
    """
    hits, _ = _ranked_in_groups(y_true, y_score, groups, k, np.ones_like)
    return float(np.mean(hits))


def _first_positive(
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray,
    value: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Per group with a positive: the expected ``value(rank)`` of its first positive (rank from 1).

    The first positive is the best-scored one; the rows above it are negatives. When it ties with
    ``t`` negatives and ``m`` positives, every order of the tie is equally likely, so the first
    positive lands on tie slot j with probability C(t, j-1)/C(m+t, j-1) * m/(m+t-j+1); a constant
    scorer gets the rank a random order would give, not the file's order.
    """
    labels, scores = binary_inputs(y_true, y_score)
    codes = _group_codes(groups, labels)
    n_groups = int(codes.max()) + 1
    positive = labels == 1
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, codes[positive], scores[positive])
    row_best = best[codes]
    above = np.bincount(codes, scores > row_best, minlength=n_groups)
    tied = scores == row_best
    ties_neg = np.bincount(codes, tied & ~positive, minlength=n_groups)
    ties_pos = np.bincount(codes, tied & positive, minlength=n_groups)
    has_positive = ties_pos > 0
    above, t, m = above[has_positive], ties_neg[has_positive], ties_pos[has_positive]
    expected = np.zeros(len(t))
    before = np.ones(len(t))  # P(the first j - 1 tie slots are all negatives)
    for j in range(1, int(t.max(initial=0)) + 2):
        open_ = t >= j - 1
        left = np.maximum(m + t - (j - 1), 1)
        expected += np.where(open_, before * m / left * value(above + j), 0.0)
        before = np.where(open_, before * (t - (j - 1)) / left, 0.0)
    return expected


def mrr(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> float:
    """Mean reciprocal rank: the mean over groups of 1 / the rank of the group's first positive.

    The metric of "one right answer per group" problems (the contact an email went to, the
    article that resolved a ticket). Groups without a positive are left out, as in
    :func:`ndcg_at_k`; ties count at their expected reciprocal rank.

    Raises:
        ValueError: as :func:`ndcg_at_k`.
    """
    return float(np.mean(_first_positive(y_true, y_score, groups, lambda rank: 1.0 / rank)))


def hit_at_k(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """Share of groups (with a positive) whose first positive is ranked in the top ``k``.

    Ties count by the chance a random order of the tie puts a positive inside the top ``k``.

    Raises:
        ValueError: as :func:`ndcg_at_k`.
    """
    _check_k(k)
    return float(np.mean(_first_positive(y_true, y_score, groups, lambda rank: (rank <= k).astype(float))))


METRICS: dict[str, Metric] = {
    "auc": auc,
    "log_loss": log_loss,
    "normalized_entropy": normalized_entropy,
    "calibration_error": calibration_error,
    "pr_auc": pr_auc,
    "recall_at_precision": recall_at_precision,
    "precision_at_recall": precision_at_recall,
    "f1": f1,
    "ndcg_at_k": ndcg_at_k,
    "engagements_at_k": engagements_at_k,
    "mrr": mrr,
    "hit_at_k": hit_at_k,
}
"""Every metric the spec may name, by short name."""


def needs_groups(fn: Metric) -> bool:
    """Whether a metric ranks within groups: it takes a ``groups`` argument."""
    return "groups" in inspect.signature(fn).parameters


def _get(metric: MetricSpec) -> Metric:
    fn = METRICS.get(metric.name)
    if fn is None:
        raise SpecError(
            f"metrics: {metric.name!r} is not a known metric; use one of {sorted(METRICS)} "
            "(or add it to mlsd.evaluation.metrics.METRICS)"
        )
    return fn


def _check_params(metric: MetricSpec, fn: Metric) -> None:
    grouped = {"groups": np.empty(0)} if needs_groups(fn) else {}
    try:
        inspect.signature(fn).bind(np.empty(0), np.empty(0), **grouped, **metric.params)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(fn).parameters if p not in ("y_true", "y_score", "groups")]
        raise SpecError(
            f"metrics.{metric.name}.params: {sorted(metric.params)} do not fit {metric.name} ({exc}); "
            f"it accepts {accepted or 'no params'}"
        ) from exc


def _check_each(metrics: Sequence[MetricSpec], group: str | None) -> None:
    for metric in metrics:
        fn = _get(metric)
        _check_params(metric, fn)
        if needs_groups(fn) and group is None:
            raise SpecError(
                f"metrics.{metric.name}: ranks rows within groups, but label.group is not set; "
                "set label.group to the events column that names a group (e.g. session_id)"
            )


def check_metric_names(metrics: Sequence[MetricSpec], group: str | None = None) -> None:
    """Fail before training if a metric name is unknown (or its params are not its keywords), a
    grouped metric has no group column (``group``: the spec's ``label.group``), or the tuning
    target (the first metric) is grouped: Tune scores trials pointwise.

    Raises:
        SpecError: naming the metric and listing the known names (or the accepted params), or
            naming the grouped metric and ``label.group``.
    """
    _check_each(metrics, group)
    if metrics and needs_groups(METRICS[metrics[0].name]):
        raise SpecError(
            f"metrics: the first metric is the tuning target and must be pointwise, but "
            f"{metrics[0].name!r} ranks within groups; list a pointwise metric (e.g. auc) first"
        )


def compute_metrics(
    metrics: Sequence[MetricSpec],
    y_true: np.ndarray,
    y_score: np.ndarray,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric of the spec on one set of scores, in spec order.

    Args:
        metrics: the metrics to compute.
        y_true: labels in {0, 1}.
        y_score: scores per row.
        groups: the group of each row (the spec's ``label.group`` column), for grouped metrics.

    Raises:
        SpecError: a metric name is unknown or its params do not fit it, or a grouped metric
            gets no ``groups``.
        ValueError: the labels or scores are unusable (see :func:`binary_inputs`).
    """
    _check_each(metrics, None if groups is None else "groups")
    labels, scores = binary_inputs(y_true, y_score)
    values = {}
    for m in metrics:
        fn = METRICS[m.name]
        grouped = {"groups": groups} if needs_groups(fn) else {}
        values[m.name] = float(fn(labels, scores, **grouped, **m.params))
    return values
