"""The retraining trigger: drift or online quality past the spec's thresholds.

The monitoring pipeline writes the decision to ``retrain.json`` and the exporter turns it into
``mlsd_retrain_needed``; ``kedro run`` then trains and registers a candidate, which waits
(``registry.promote: first``) until ``mlsd rollout start --canary TAG --percent N`` tries it.
"""

from __future__ import annotations

from typing import Any


def retrain_reasons(
    summary: dict[str, Any],
    max_drifted_share: float,
    on_prediction_drift: bool,
    max_log_loss_increase: float | None,
    offline_log_loss: float | None,
    min_labelled: int,
) -> list[str]:
    """Why the stable model should be retrained, from a ``drift.json`` summary (empty: it need not).

    Args:
        summary: the monitoring summary (``drifted_share``, ``prediction``, ``quality``).
        max_drifted_share: the spec's limit on the share of drifted columns.
        on_prediction_drift: whether a drifted score distribution is a reason on its own.
        max_log_loss_increase: allowed relative increase of stable's online log loss over its
            holdout log loss (None: quality is not a reason).
        offline_log_loss: stable's holdout log loss from its registry metadata.
        min_labelled: labelled requests stable needs before its online log loss counts.
    """
    reasons = []
    columns = summary.get("columns") or {}
    share = summary.get("drifted_share")
    if share is not None and share > max_drifted_share:
        drifted = ", ".join(summary["drifted_columns"])
        reasons.append(
            f"data drift: {len(summary['drifted_columns'])}/{len(columns)} columns drifted ({drifted}); "
            f"share {share:.2f} > {max_drifted_share:.2f}"
        )
    prediction = summary.get("prediction") or {}
    if on_prediction_drift and prediction.get("drifted"):
        reasons.append(
            f"prediction drift: {prediction['method']} distance of the score {prediction['score']:.3f} "
            f">= {prediction['threshold']}"
        )
    stable = (summary.get("quality") or {}).get("stable") or {}
    online = stable.get("log_loss")
    if (
        max_log_loss_increase is not None
        and offline_log_loss
        and online is not None
        and stable.get("labelled", 0) >= min_labelled
        and online > offline_log_loss * (1 + max_log_loss_increase)
    ):
        reasons.append(
            f"online quality: stable log loss {online:.4f} on {stable['labelled']} labelled requests is "
            f"{online / offline_log_loss - 1:.0%} above its holdout {offline_log_loss:.4f} "
            f"(limit {max_log_loss_increase:.0%})"
        )
    return reasons
