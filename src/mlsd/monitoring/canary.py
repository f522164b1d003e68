"""Automated canary analysis: compare the canary arm with stable and decide.

Inputs are the prediction log's served records and, once it arrives, feedback (``request_id`` ->
label). Guardrails and the online metric are tested as statistics, not eyeballed:

- **errors**: the share of canary-routed requests that fell back to stable. Roll back when the
  one-sided 95% Wilson lower bound of that share exceeds ``max_error_rate``.
- **latency**: each model's own cost per call, ``model_cpu_ms`` (the CPU time of the ONNX Runtime
  call on its thread: the canary's call runs in a pool thread and its wall time, ``model_ms``,
  also holds its waits for a core or the GIL on a loaded machine; routing and feature reads are
  the same for both arms). Roll back when, with ``1 - alpha`` confidence (distribution-free
  bounds of each arm's p99 from order statistics), the canary's p99 is over ``max_p99_ratio`` x
  stable's **and** more by ``min_p99_increase_share`` of the spec's ``serving.latency_budget_ms``:
  a 1.5x ratio of a 0.1 ms call is nothing to a request budget of tens of ms, and a p99 of a few
  hundred requests is too noisy to be read without a bound. Older records without the CPU time
  are judged on ``model_ms``, else the whole request's ``latency_ms``.
- **online metric**: per-request log loss from feedback, canary minus stable. When canary records
  carry ``stable_score`` (stable scored the same request), the test is **paired** on the canary's
  labelled requests: both models, same requests, same outcomes, so user-to-user variance cancels
  and a few thousand requests decide what two independent arms need hundreds of thousands for.
  Otherwise it is Welch's t-test between the arms. Roll back when the canary is worse with
  p < ``alpha`` and by more than the margin; promote when the upper end of the one-sided
  ``1 - alpha`` confidence bound of the difference is below ``log_loss_margin``. The reasons
  quote the difference, its bound and the margin with both models' log loss over the requests
  compared (each arm's own log loss is over different users and is not what decides). Each
  arm's observed rate (``positive_rate``: clicks, frauds, ... per labelled request) and a
  two-proportion z statistic are reported.
- **ranking** (paired records only): ROC AUC of both models on the canary's labelled requests,
  DeLong's test for correlated AUCs. Roll back when the canary ranks worse with p < ``alpha`` and
  by more than ``auc_margin``, once ``min_positives`` of them were clicks (an AUC rests on its rare
  class: with a few dozen positives it swings by 0.1 between equal models). A model that lost its
  signal (say, fit to shuffled labels) predicts near the base rate, which log loss punishes only
  mildly at a 2% click rate, while its AUC falls to 0.5.
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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlsd.monitoring.latency import LATENCY_MEASURES, latency_column, latency_slower
from mlsd.monitoring.significance import LogLossTest, log_loss, log_loss_test, paired_auc, wilson_lower

Decision = Literal["promote", "rollback", "keep_collecting"]

NO_AUTOMATIC_VERDICT: dict[str, str] = {
    "retrieval": "a retrieval model (the analysis compares probabilities); compare "
    "quality.<variant>.hit_rate in drift.json",
    "uplift": "an uplift model (its score is an effect, not a probability, and the online outcome "
    "of a scored user is the untreated one, so the effect itself is never observed online); judge "
    "it on a randomized campaign's holdout (evaluation.json: qini, incremental_share) and compare "
    "quality.<variant>.mean_score in drift.json",
    "multilabel": "a multi-label model (the served score is the mean of its class scores, the outcome "
    "the share of classes that apply); compare quality.<variant>.label_share with mean_score in "
    "drift.json and the per-label report of evaluation.json",
}
"""Tasks the paired canary analysis cannot judge, and what to look at instead."""


class CanaryParams(BaseModel):
    """conf ``canary_analysis:``: sample sizes, significance and guardrails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(default=500, ge=1, description="requests per arm before deciding")
    min_feedback: int = Field(default=500, ge=1, description="labelled requests per arm before deciding")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="canary fallbacks per routed request")
    max_p99_ratio: float = Field(
        default=1.5, gt=1, description="canary p99 / stable p99 of the models' own cost per call"
    )
    min_p99_increase_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="and canary p99 - stable p99, as a share of the spec's serving.latency_budget_ms",
    )
    log_loss_margin: float = Field(default=0.002, ge=0, description="how much worse the canary may be")
    auc_margin: float = Field(default=0.02, ge=0, description="how much lower the canary's AUC may be")
    min_positives: int = Field(
        default=100,
        ge=10,
        description="labelled positives before AUCs are compared (DeLong's normal approx.)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "min_p99_increase_ms" in data:
            raise ValueError(
                "canary_analysis.min_p99_increase_ms was replaced by min_p99_increase_share: the "
                "increase that matters, as a share of the spec's serving.latency_budget_ms (0.05: 5%)"
            )
        return data

    def min_p99_increase_ms(self, latency_budget_ms: float) -> float:
        """The p99 increase (ms) that is material for a request budget of ``latency_budget_ms``."""
        return self.min_p99_increase_share * latency_budget_ms


@dataclass(frozen=True)
class ArmStats:
    """One arm's numbers, over its own requests (the arms serve different users).

    ``positive_rate`` is the observed rate: the share of labelled requests whose outcome was
    positive (a click, a fraud, a conversion: the spec's label).
    """

    requests: int
    errors: int
    p99_ms: float
    mean_score: float
    labelled: int
    positive_rate: float
    log_loss: float


CHECKS = ("errors", "latency", "online_metric", "ranking")
"""What can fail a canary; ``Verdict.failed`` lists those that did (the reasons say how)."""


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, in nested dicts and lists:
    undefined numbers (a rate with no labels) print as JSON ``null``, never as invalid ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


@dataclass(frozen=True)
class Verdict:
    """The decision, why, and every number behind it."""

    decision: Decision
    reasons: list[str]
    stable: ArmStats
    canary: ArmStats
    tests: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The verdict as plain, valid JSON (undefined numbers are None)."""
        return finite(
            {
                "decision": self.decision,
                "reasons": self.reasons,
                "failed": self.failed,
                "stable": self.stable.__dict__,
                "canary": self.canary.__dict__,
                "tests": self.tests,
                "limits": self.limits,
            }
        )


def _arm(frame: pd.DataFrame, errors: int, latency: str) -> tuple[ArmStats, np.ndarray]:
    """One arm's numbers, and the per-request log loss of its labelled requests (for the tests)."""
    labelled = frame.dropna(subset=["label"])
    losses = log_loss(labelled["score"].to_numpy(), labelled["label"].to_numpy())
    stats = ArmStats(
        requests=len(frame) + errors,
        errors=errors,
        p99_ms=float(np.percentile(frame[latency], 99)) if len(frame) else float("nan"),
        mean_score=float(frame["score"].mean()) if len(frame) else float("nan"),
        labelled=len(labelled),
        positive_rate=float(labelled["label"].mean()) if len(labelled) else float("nan"),
        log_loss=float(losses.mean()) if len(losses) else float("nan"),
    )
    return stats, losses


def _paired_losses(canary_rows: pd.DataFrame) -> np.ndarray | None:
    """Per labelled canary request: canary log loss minus stable's on the same request (None when
    the records carry no ``stable_score``)."""
    if "stable_score" not in canary_rows:
        return None
    both = canary_rows.dropna(subset=["label", "stable_score"])
    if both.empty:
        return None
    y = both["label"].to_numpy()
    return log_loss(both["score"].to_numpy(), y) - log_loss(both["stable_score"].to_numpy(), y)


def _ranking_worse(canary_rows: pd.DataFrame, params: CanaryParams, tests: dict[str, float]) -> str | None:
    """The rollback reason when the canary ranks its own labelled requests worse than stable did."""
    both = canary_rows.dropna(subset=["label", "stable_score"]) if "stable_score" in canary_rows else None
    if both is None or len(both) < params.min_feedback:
        return None
    positives = int(both["label"].sum())
    if min(positives, len(both) - positives) < params.min_positives:
        return None
    auc_c, auc_s, p = paired_auc(
        both["label"].to_numpy(), both["score"].to_numpy(), both["stable_score"].to_numpy()
    )
    tests.update({"auc_canary": auc_c, "auc_stable": auc_s, "auc_worse_p": p})
    if p < params.alpha and auc_s - auc_c > params.auc_margin:
        return (
            f"ranking: canary AUC {auc_c:.3f} vs stable {auc_s:.3f} on the same {len(both)} requests "
            f"(DeLong p = {p:.2g})"
        )
    return None


def _positive_rate_z(canary: ArmStats, stable: ArmStats) -> float:
    """Two-proportion z statistic of the arms' observed rates (reported, never decides)."""
    n_c, n_s = canary.labelled, stable.labelled
    pooled = (canary.positive_rate * n_c + stable.positive_rate * n_s) / (n_c + n_s)
    z_se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s)) or float("inf")
    return float((canary.positive_rate - stable.positive_rate) / z_se)


def _promote_reason(
    test: LogLossTest, arms_stats: tuple[ArmStats, ArmStats], column: str, params: CanaryParams
) -> str:
    canary, stable = arms_stats
    arms = ""
    if test.compared.endswith("(paired)"):
        arms = (
            f" (each arm on its own users: canary {canary.log_loss:.5f}, stable {stable.log_loss:.5f}; "
            "different requests, so not what decides)"
        )
    return (
        f"online metric: {test.compared} the canary's log loss minus stable's is {test.diff:+.5f} "
        f"(canary {test.canary:.5f}, stable {test.stable:.5f}); with {1 - params.alpha:.0%} confidence "
        f"the canary is worse by at most {test.upper:+.5f}, under the margin {params.log_loss_margin}"
        f"{arms}; errors and latency within guardrails (p99 of {LATENCY_MEASURES.get(column, column)}: "
        f"canary {canary.p99_ms:.3f} ms, stable {stable.p99_ms:.3f} ms)"
    )


def analyze_canary(
    records: pd.DataFrame,
    feedback: pd.DataFrame,
    canary_tag: str,
    params: CanaryParams,
    *,
    latency_budget_ms: float,
) -> Verdict:
    """Compare the canary with stable over the served records of one canary run.

    Args:
        records: served prediction-log records (``request_id, variant, model_tag, fallback, score,
            latency_ms``, and ``model_ms`` / ``model_cpu_ms`` where logged), for the period the
            canary ran.
        feedback: ``request_id, label`` (1/0) for the requests whose outcome is known.
        canary_tag: the canary's tag; records scored by it are the canary arm.
        params: thresholds.
        latency_budget_ms: the spec's ``serving.latency_budget_ms``: a latency increase counts
            once it is ``params.min_p99_increase_share`` of it.
    """
    from scipy.stats import ks_2samp

    served = records.drop(columns="label", errors="ignore").merge(
        feedback[["request_id", "label"]], on="request_id", how="left"
    )
    fell_back = served["fallback"].fillna(False).astype(bool)
    canary_rows = served[served["model_tag"] == canary_tag]
    stable_rows = served[(served["model_tag"] != canary_tag) & ~fell_back]
    latency = latency_column(served)
    (canary, c_loss) = _arm(canary_rows, int(fell_back.sum()), latency)
    (stable, s_loss) = _arm(stable_rows, 0, latency)
    failed: dict[str, str] = {}
    tests: dict[str, float] = {}
    limits = {
        **params.model_dump(),
        "latency_budget_ms": latency_budget_ms,
        "min_p99_increase_ms": params.min_p99_increase_ms(latency_budget_ms),
    }

    def verdict(decision: Decision, reasons: list[str]) -> Verdict:
        return Verdict(decision, reasons, stable, canary, tests, list(failed), limits)

    error_low = wilson_lower(canary.errors, canary.requests, params.alpha)
    tests["error_rate_lower_bound"] = error_low
    if error_low > params.max_error_rate:
        failed["errors"] = (
            f"errors: {canary.errors}/{canary.requests} canary requests fell back; the rate is above "
            f"{params.max_error_rate:.3f} with {1 - params.alpha:.0%} confidence "
            f"(lower bound {error_low:.4f})"
        )
    slower = latency_slower((canary_rows, stable_rows), latency, params, latency_budget_ms, tests)
    if slower:
        failed["latency"] = slower
    if len(canary_rows) and len(stable_rows):
        ks = ks_2samp(canary_rows["score"], stable_rows["score"])
        tests["score_ks_statistic"], tests["score_ks_p"] = float(ks.statistic), float(ks.pvalue)

    paired = _paired_losses(canary_rows)
    if paired is not None:
        enough_feedback = min(canary.labelled, len(paired)) >= params.min_feedback
    else:
        enough_feedback = min(canary.labelled, stable.labelled) >= params.min_feedback
    test = None
    if canary.labelled > 1 and stable.labelled > 1:
        test = log_loss_test(paired, canary_rows, (c_loss, s_loss), params.alpha)
        if paired is not None:
            tests["paired_requests"] = float(len(paired))
        tests.update(
            {
                "log_loss_canary_compared": test.canary,
                "log_loss_stable_compared": test.stable,
                "log_loss_diff": test.diff,
                "log_loss_diff_upper": test.upper,
                "log_loss_worse_p": test.p,
                "positive_rate_z": _positive_rate_z(canary, stable),
            }
        )
        if enough_feedback and test.p < params.alpha and test.diff > params.log_loss_margin:
            failed["online_metric"] = (
                f"online metric: {test.compared} the canary's log loss is worse by {test.diff:+.5f} "
                f"(canary {test.canary:.5f}, stable {test.stable:.5f}; p = {test.p:.2g} < "
                f"{params.alpha}, beyond the margin {params.log_loss_margin})"
            )
    ranking = _ranking_worse(canary_rows, params, tests)
    if ranking:
        failed["ranking"] = ranking
    if failed:
        return verdict("rollback", list(failed.values()))
    if test is None or not enough_feedback or min(len(canary_rows), len(stable_rows)) < params.min_requests:
        need = (
            f"need {params.min_requests} requests and {params.min_feedback} labelled per arm; have "
            f"canary {len(canary_rows)}/{canary.labelled}, stable {len(stable_rows)}/{stable.labelled}"
        )
        return verdict("keep_collecting", [need])
    if test.upper < params.log_loss_margin:
        return verdict("promote", [_promote_reason(test, (canary, stable), latency, params)])
    return verdict(
        "keep_collecting",
        [
            f"not conclusive: {test.compared} the canary's log loss minus stable's is {test.diff:+.5f}; "
            f"its {1 - params.alpha:.0%} upper bound {test.upper:+.5f} is not under the margin "
            f"{params.log_loss_margin} yet (more feedback narrows it)"
        ],
    )
