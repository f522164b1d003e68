"""The statistics of the canary analysis: a binomial proportion's Wilson bound, distribution-free
confidence bounds of a quantile (a p99 from order statistics), DeLong's test for two correlated
ROC AUCs, and the log-loss difference of two models (paired on the same requests, else Welch's
between two groups) with its one-sided confidence bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

_EPS = 1e-7


def wilson_lower(successes: int, n: int, alpha: float) -> float:
    """One-sided lower confidence bound of a binomial proportion (Wilson score)."""
    if n == 0:
        return 0.0
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha))
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def quantile_bounds(values: np.ndarray, q: float, alpha: float) -> tuple[float, float]:
    """One-sided ``1 - alpha`` lower and upper confidence bounds of the ``q`` quantile of the
    distribution ``values`` were drawn from (independent draws; no shape assumed).

    The k-th smallest of n values lies below the quantile exactly when at least k values do, and
    how many do is Binomial(n, q): the lower bound is the largest order statistic that lies below
    it with probability ``1 - alpha``, the upper bound the smallest that lies above it. A p99
    needs ~300 values for an upper bound at all (the largest of n is above it with probability
    1 - 0.99^n); with fewer the bound is infinite, and so no evidence.
    """
    from scipy.stats import binom

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    k = np.arange(1, n + 1)
    below = np.nonzero(binom.sf(k - 1, n, q) >= 1 - alpha)[0]  # P(X_(k) <= quantile)
    above = np.nonzero(binom.cdf(k - 1, n, q) >= 1 - alpha)[0]  # P(X_(k) >= quantile)
    lower = float(x[below[-1]]) if len(below) else -math.inf
    upper = float(x[above[0]]) if len(above) else math.inf
    return lower, upper


def log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores, _EPS, 1 - _EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _placements(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive, the share of negatives it outranks
    (ties count half), and for each negative, the share of positives that outrank it."""
    neg, pos = np.sort(negatives), np.sort(positives)
    below = np.searchsorted(neg, positives, "left") + np.searchsorted(neg, positives, "right")
    above = 2 * len(pos) - np.searchsorted(pos, negatives, "left") - np.searchsorted(pos, negatives, "right")
    return below / (2 * len(neg)), above / (2 * len(pos))


def auc_difference(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float, float]:
    """ROC AUC of two scorings of the same rows and the standard error of their difference
    (DeLong, DeLong & Clarke-Pearson 1988: the AUCs' covariance from the placement values); the
    error is 0 for the same ranking twice, NaN when a class has a single row."""
    y = labels.astype(bool)
    v10, v01 = zip(*(_placements(s[y], s[~y]) for s in (first, second)), strict=True)
    aucs = [float(v.mean()) for v in v10]
    s10, s01 = np.cov(np.vstack(v10)), np.cov(np.vstack(v01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / y.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / (
        ~y
    ).sum()
    return aucs[0], aucs[1], 0.0 if var <= 0 else math.sqrt(var)  # NaN (one positive) stays NaN


def paired_auc(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float, float]:
    """ROC AUC of two scorings of the same rows and the one-sided p-value that ``first`` ranks
    worse than ``second`` (DeLong's test, :func:`auc_difference`)."""
    from scipy.stats import norm

    first_auc, second_auc, se = auc_difference(labels, first, second)
    if se == 0:  # the same ranking twice: no evidence either way
        return first_auc, second_auc, 0.5
    return first_auc, second_auc, float(norm.sf((second_auc - first_auc) / se))


@dataclass(frozen=True)
class LogLossTest:
    """Canary minus stable log loss: the difference, its one-sided upper bound and p-value, and
    each model's mean log loss over what was compared (the same requests when paired)."""

    diff: float
    upper: float
    p: float
    canary: float
    stable: float
    compared: str  # "on the same N canary requests" | "between the arms (Welch, n = a / b)"


def log_loss_test(
    paired: np.ndarray | None,
    canary_rows: pd.DataFrame,
    arms: tuple[np.ndarray, np.ndarray],
    alpha: float,
) -> LogLossTest:
    """Paired one-sample t-test on the canary's own requests, else Welch's between the arms."""
    from scipy.stats import norm, ttest_1samp, ttest_ind

    if paired is not None:
        both = canary_rows.dropna(subset=["label", "stable_score"])
        y = both["label"].to_numpy()
        canary_mean = float(log_loss(both["score"].to_numpy(), y).mean())
        stable_mean = float(log_loss(both["stable_score"].to_numpy(), y).mean())
        worse = ttest_1samp(paired, 0.0, alternative="greater")
        diff, se = float(paired.mean()), float(paired.std(ddof=1) / math.sqrt(len(paired)))
        compared = f"on the same {len(paired)} canary requests (paired)"
    else:
        c_loss, s_loss = arms
        canary_mean, stable_mean = float(c_loss.mean()), float(s_loss.mean())
        worse = ttest_ind(c_loss, s_loss, equal_var=False, alternative="greater")
        diff = canary_mean - stable_mean
        se = math.sqrt(c_loss.var(ddof=1) / len(c_loss) + s_loss.var(ddof=1) / len(s_loss))
        compared = f"between the arms (Welch, n = {len(c_loss)} / {len(s_loss)})"
    upper = diff + float(norm.ppf(1 - alpha)) * se
    return LogLossTest(diff, upper, float(worse.pvalue), canary_mean, stable_mean, compared)
