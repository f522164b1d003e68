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
    alpha: float = 0.05,
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
        alpha: with stable's ``log_loss_se`` in the summary, the online log loss counts only when
            the lower end of its one-sided ``1 - alpha`` confidence bound is past the limit (a
            rare positive class makes a window's log loss swing by half its value by chance).
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
    quality = _quality_reason(summary, max_log_loss_increase, offline_log_loss, min_labelled, alpha)
    return reasons + ([quality] if quality else [])


def _quality_reason(
    summary: dict[str, Any],
    max_increase: float | None,
    offline: float | None,
    min_labelled: int,
    alpha: float,
) -> str | None:
    stable = (summary.get("quality") or {}).get("stable") or {}
    online, se = stable.get("log_loss"), stable.get("log_loss_se")
    if max_increase is None or not offline or online is None or stable.get("labelled", 0) < min_labelled:
        return None
    from scipy.stats import norm

    limit = offline * (1 + max_increase)
    low = online - float(norm.ppf(1 - alpha)) * se if se is not None else online
    if low <= limit:
        return None
    bound = "" if se is None else f" (its {1 - alpha:.0%} lower bound {low:.4f} too)"
    return (
        f"online quality: stable log loss {online:.4f} on {stable['labelled']} labelled requests is "
        f"{online / offline - 1:.0%} above its holdout {offline:.4f}{bound}, past the limit "
        f"{limit:.4f} (+{max_increase:.0%})"
    )
