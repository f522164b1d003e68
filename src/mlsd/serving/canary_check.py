"""Judge the running canary from this service's logs and, when asked, act on the verdict.

Shared by ``mlsd rollout analyze`` and the ``monitoring`` pipeline: the prediction log since the
canary started, joined to feedback, goes through :func:`mlsd.monitoring.analyze_canary`; with
``apply`` a ``promote`` verdict moves the registry's stable pointer to the canary and a
``rollback`` drops the canary from the rollout file (both atomic).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from mlsd.monitoring import CanaryParams
    from mlsd.registry import ModelRegistry


def check_canary(
    rollout_file: Path,
    registry: ModelRegistry,
    served: pd.DataFrame,
    feedback: pd.DataFrame,
    params: CanaryParams,
    apply: bool,
    *,
    latency_budget_ms: float,
) -> dict[str, Any] | None:
    """The verdict on the canary of ``rollout_file`` (None when there is no canary).

    Args:
        rollout_file: deployment/rollout.yaml.
        registry: the project's registry (promotion moves its stable pointer).
        served: served prediction-log records (:func:`mlsd.monitoring.logs.served_frame`).
        feedback: ``request_id, label``.
        params: sample sizes and thresholds.
        apply: promote or roll back as the verdict says.
        latency_budget_ms: the spec's ``serving.latency_budget_ms`` (what a latency increase is
            measured against).
    """
    from mlsd.monitoring import analyze_canary
    from mlsd.serving.rollout import promote_canary, read_rollout, rollback_canary

    canary = read_rollout(rollout_file).canary
    if canary is None:
        return None
    if canary.started:
        served = served[served["ts"] >= pd.Timestamp(canary.started)]
    if served.empty:
        reasons = [f"no served requests since the canary {canary.tag} started"]
        return {"canary_tag": canary.tag, "decision": "keep_collecting", "reasons": reasons, "applied": False}
    verdict = analyze_canary(served, feedback, canary.tag, params, latency_budget_ms=latency_budget_ms)
    out = {"canary_tag": canary.tag, **verdict.as_dict(), "applied": False}
    if apply and verdict.decision == "promote":
        promote_canary(rollout_file, registry, reason="; ".join(verdict.reasons))
        out["applied"] = True
    elif apply and verdict.decision == "rollback":
        rollback_canary(rollout_file)
        out["applied"] = True
    return out
