"""Automated canary analysis: compare the canary arm with stable and decide.

Inputs are the prediction log's served records and, once it arrives, feedback (``request_id`` ->
label). Guardrails and the online metric are tested as statistics, not eyeballed:

- **errors**: the share of canary-routed requests that fell back to stable. Roll back when the
  one-sided 95% Wilson lower bound of that share exceeds ``max_error_rate``.
- **latency**: roll back when the canary's p99 exceeds stable's by more than ``max_p99_ratio``.
- **online metric**: per-request log loss from feedback, canary minus stable, Welch's t-test.
  Roll back when the canary is worse with p < ``alpha``; promote when the upper end of the
  ``1 - alpha`` confidence interval of the difference is below ``log_loss_margin`` (the canary is
  not worse by more than the margin). CTR per arm and a two-proportion z-test are reported.
- **predictions**: the two-sample Kolmogorov-Smirnov test of the score distributions is reported
  (a better model legitimately scores differently, so it informs, it does not decide).

Until each arm has ``min_requests`` requests and ``min_feedback`` labelled ones, the verdict is
``keep_collecting`` unless a guardrail already fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["promote", "rollback", "keep_collecting"]
_EPS = 1e-7


class CanaryParams(BaseModel):
    """conf ``canary_analysis:``: sample sizes, significance and guardrails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(default=500, ge=1, description="requests per arm before deciding")
    min_feedback: int = Field(default=500, ge=1, description="labelled requests per arm before deciding")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="canary fallbacks per routed request")
    max_p99_ratio: float = Field(default=1.5, gt=1, description="canary p99 / stable p99")
    log_loss_margin: float = Field(default=0.002, ge=0, description="how much worse the canary may be")


@dataclass(frozen=True)
class ArmStats:
    """One arm's numbers."""

    requests: int
    errors: int
    p99_ms: float
    mean_score: float
    labelled: int
    ctr: float
    log_loss: float


@dataclass(frozen=True)
class Verdict:
    """The decision, why, and every number behind it."""

    decision: Decision
    reasons: list[str]
    stable: ArmStats
    canary: ArmStats
    tests: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": self.reasons,
            "stable": self.stable.__dict__,
            "canary": self.canary.__dict__,
            "tests": self.tests,
        }


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


def _log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores, _EPS, 1 - _EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _arm(frame: pd.DataFrame, errors: int) -> tuple[ArmStats, np.ndarray]:
    """One arm's numbers, and the per-request log loss of its labelled requests (for the tests)."""
    labelled = frame.dropna(subset=["label"])
    losses = _log_loss(labelled["score"].to_numpy(), labelled["label"].to_numpy())
    stats = ArmStats(
        requests=len(frame) + errors,
        errors=errors,
        p99_ms=float(np.percentile(frame["latency_ms"], 99)) if len(frame) else float("nan"),
        mean_score=float(frame["score"].mean()) if len(frame) else float("nan"),
        labelled=len(labelled),
        ctr=float(labelled["label"].mean()) if len(labelled) else float("nan"),
        log_loss=float(losses.mean()) if len(losses) else float("nan"),
    )
    return stats, losses


def analyze_canary(
    records: pd.DataFrame, feedback: pd.DataFrame, canary_tag: str, params: CanaryParams
) -> Verdict:
    """Compare the canary with stable over the served records of one canary run.

    Args:
        records: served prediction-log records (``request_id, variant, model_tag, fallback, score,
            latency_ms``), for the period the canary ran.
        feedback: ``request_id, label`` (1/0) for the requests whose outcome is known.
        canary_tag: the canary's tag; records scored by it are the canary arm.
        params: thresholds.
    """
    from scipy.stats import ks_2samp, norm, ttest_ind

    served = records.merge(feedback[["request_id", "label"]], on="request_id", how="left")
    fell_back = served["fallback"].fillna(False).astype(bool)
    canary_rows = served[served["model_tag"] == canary_tag]
    stable_rows = served[(served["model_tag"] != canary_tag) & ~fell_back]
    (canary, c_loss), (stable, s_loss) = _arm(canary_rows, int(fell_back.sum())), _arm(stable_rows, 0)
    reasons: list[str] = []
    tests: dict[str, float] = {}

    error_low = wilson_lower(canary.errors, canary.requests, params.alpha)
    tests["error_rate_lower_bound"] = error_low
    if error_low > params.max_error_rate:
        reasons.append(
            f"errors: {canary.errors}/{canary.requests} canary requests fell back; the rate is above "
            f"{params.max_error_rate:.3f} with {1 - params.alpha:.0%} confidence "
            f"(lower bound {error_low:.4f})"
        )
    enough_latency = min(len(canary_rows), len(stable_rows)) >= params.min_requests
    if enough_latency and canary.p99_ms > params.max_p99_ratio * stable.p99_ms:
        reasons.append(
            f"latency: canary p99 {canary.p99_ms:.2f} ms > {params.max_p99_ratio} x "
            f"stable p99 {stable.p99_ms:.2f} ms"
        )
    if len(canary_rows) and len(stable_rows):
        ks = ks_2samp(canary_rows["score"], stable_rows["score"])
        tests["score_ks_statistic"], tests["score_ks_p"] = float(ks.statistic), float(ks.pvalue)

    enough_feedback = min(canary.labelled, stable.labelled) >= params.min_feedback
    if canary.labelled > 1 and stable.labelled > 1:
        worse = ttest_ind(c_loss, s_loss, equal_var=False, alternative="greater")
        diff = canary.log_loss - stable.log_loss
        se = math.sqrt(c_loss.var(ddof=1) / len(c_loss) + s_loss.var(ddof=1) / len(s_loss))
        upper = diff + float(norm.ppf(1 - params.alpha)) * se
        tests.update(
            {"log_loss_diff": diff, "log_loss_diff_upper": upper, "log_loss_worse_p": float(worse.pvalue)}
        )
        n_c, n_s = canary.labelled, stable.labelled
        pooled = (canary.ctr * n_c + stable.ctr * n_s) / (n_c + n_s)
        z_se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s)) or float("inf")
        tests["ctr_z"] = float((canary.ctr - stable.ctr) / z_se)
        if enough_feedback and worse.pvalue < params.alpha and diff > params.log_loss_margin:
            reasons.append(
                f"online metric: canary log loss {canary.log_loss:.4f} vs stable {stable.log_loss:.4f} "
                f"(worse by {diff:.4f}, Welch p = {worse.pvalue:.2g}, "
                f"n = {canary.labelled} / {stable.labelled})"
            )
    if reasons:
        return Verdict("rollback", reasons, stable, canary, tests)
    if not enough_feedback or min(len(canary_rows), len(stable_rows)) < params.min_requests:
        need = (
            f"need {params.min_requests} requests and {params.min_feedback} labelled per arm; have "
            f"canary {len(canary_rows)}/{canary.labelled}, stable {len(stable_rows)}/{stable.labelled}"
        )
        return Verdict("keep_collecting", [need], stable, canary, tests)
    if tests["log_loss_diff_upper"] < params.log_loss_margin:
        return Verdict(
            "promote",
            [
                f"canary log loss {canary.log_loss:.4f} vs stable {stable.log_loss:.4f}: at most "
                f"{tests['log_loss_diff_upper']:.4f} worse with {1 - params.alpha:.0%} confidence "
                f"(margin {params.log_loss_margin}); errors and latency within guardrails"
            ],
            stable,
            canary,
            tests,
        )
    return Verdict(
        "keep_collecting",
        [
            f"not conclusive: log loss difference {tests['log_loss_diff']:.4f}, upper bound "
            f"{tests['log_loss_diff_upper']:.4f} >= margin {params.log_loss_margin}"
        ],
        stable,
        canary,
        tests,
    )
