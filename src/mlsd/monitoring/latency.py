"""The canary analysis's latency check: is the canary's own cost per call materially and
significantly over stable's?

Each arm's p99 of the measure gets a distribution-free confidence bound from its order
statistics (:func:`mlsd.monitoring.significance.quantile_bounds`): the canary's lower bound and
stable's upper bound, at ``alpha / 2`` each, so both hold, and so their difference, with
``1 - alpha``. The canary is slower when that difference is over ``max_p99_ratio`` x stable's
bound and over ``min_p99_increase_share`` of the spec's latency budget.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlsd.monitoring.significance import quantile_bounds

if TYPE_CHECKING:
    from mlsd.monitoring.canary import CanaryParams

LATENCY_MEASURES = {
    "model_cpu_ms": "the models' own calls, CPU time on their thread (model_cpu_ms)",
    "model_ms": "the models' own calls, wall time (model_ms)",
    "latency_ms": "whole requests (latency_ms)",
}
"""What the latency check compares, best first: the first column every record has."""


def latency_column(frame: pd.DataFrame) -> str:
    """The best of :data:`LATENCY_MEASURES` that every record has."""
    present = [c for c in LATENCY_MEASURES if c in frame and frame[c].notna().all()]
    return present[0] if present else "latency_ms"


def latency_slower(
    arms: tuple[pd.DataFrame, pd.DataFrame],
    column: str,
    params: CanaryParams,
    latency_budget_ms: float,
    tests: dict[str, float],
) -> str | None:
    """The rollback reason when the canary's p99 of ``column`` is, with ``1 - alpha`` confidence,
    over ``max_p99_ratio`` x stable's and more by a material share of the latency budget."""
    canary_rows, stable_rows = arms
    if min(len(canary_rows), len(stable_rows)) < params.min_requests:
        return None
    # Two bounds at once (Bonferroni): both hold, and so the difference, with 1 - alpha.
    low, _ = quantile_bounds(canary_rows[column].to_numpy(), 0.99, params.alpha / 2)
    _, high = quantile_bounds(stable_rows[column].to_numpy(), 0.99, params.alpha / 2)
    tests.update({"p99_ms_canary_lower": low, "p99_ms_stable_upper": high})
    floor = params.min_p99_increase_ms(latency_budget_ms)
    if not (low > params.max_p99_ratio * high and low - high > floor):
        return None
    p99 = [float(np.percentile(rows[column], 99)) for rows in arms]
    return (
        f"latency: {LATENCY_MEASURES.get(column, column)}: canary p99 {p99[0]:.3f} ms, stable "
        f"{p99[1]:.3f} ms; with {1 - params.alpha:.0%} confidence the canary's is at least {low:.3f} ms "
        f"and stable's at most {high:.3f} ms: {low / high if high > 0 else math.inf:.1f}x and "
        f"{low - high:.2f} ms more, past both limits, {params.max_p99_ratio}x and {floor:.2f} ms "
        f"({params.min_p99_increase_share:.0%} of the {latency_budget_ms:g} ms latency budget)"
    )
