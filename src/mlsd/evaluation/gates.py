"""Quality gates: may this candidate model be registered?

Each metric may carry a gate in the spec. ``max_gap_to_oracle`` bounds how far the model may fall
short of the oracle (the generator's true probabilities, the best any model could do), and
``must_beat_baseline`` requires it to be strictly better than the simple baseline model. A gate
checks numbers already computed; it never recomputes a metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mlsd.spec import MetricSpec

Check = Literal["max_gap_to_oracle", "must_beat_baseline"]

TOLERANCE = 1e-12
"""Slack on ``gap <= max_gap_to_oracle`` so a gap equal to the limit passes despite float rounding
(0.80 - 0.78 is 0.020000000000000018 in binary floating point)."""


@dataclass(frozen=True)
class GateResult:
    """The outcome of one configured check of one metric.

    Attributes:
        metric: the metric name.
        check: ``"max_gap_to_oracle"`` or ``"must_beat_baseline"``.
        passed: whether the candidate passed this check.
        detail: the numbers behind the verdict, e.g.
            ``"auc 0.7710 vs oracle 0.8012: gap 0.0302 > max 0.0200"``.
    """

    metric: str
    check: Check
    passed: bool
    detail: str


def oracle_gap(metric: MetricSpec, model: float, oracle: float) -> float:
    """How much worse ``model`` is than ``oracle`` on this metric (positive = worse, in metric units)."""
    return oracle - model if metric.higher_is_better else model - oracle


def _value(values: Mapping[str, float], metric: str, scorer: str) -> float:
    if metric not in values:
        raise ValueError(
            f"no {scorer} value for metric {metric!r} (have {sorted(values)}); compute every scorer's "
            "metrics with the same metric list"
        )
    return float(values[metric])


def _gap_check(metric: MetricSpec, model: float, oracle: float, limit: float) -> GateResult:
    gap = oracle_gap(metric, model, oracle)
    passed = gap <= limit + TOLERANCE
    relation = "<=" if passed else ">"
    detail = f"{metric.name} {model:.4f} vs oracle {oracle:.4f}: gap {gap:.4f} {relation} max {limit:.4f}"
    return GateResult(metric.name, "max_gap_to_oracle", passed, detail)


def _baseline_check(metric: MetricSpec, model: float, baseline: float) -> GateResult:
    margin = -oracle_gap(metric, model, baseline)  # how much better than the baseline
    passed = margin > 0
    direction = "higher" if metric.higher_is_better else "lower"
    verdict = f"better by {margin:.4f}" if passed else f"not strictly better ({direction} is better)"
    detail = f"{metric.name} {model:.4f} vs baseline {baseline:.4f}: {verdict}"
    return GateResult(metric.name, "must_beat_baseline", passed, detail)


def check_gates(
    metrics: Sequence[MetricSpec],
    model: Mapping[str, float],
    baseline: Mapping[str, float],
    oracle: Mapping[str, float],
) -> list[GateResult]:
    """Run every configured gate: one result per check, in spec order.

    A NaN metric fails its checks (every comparison with NaN is false), so a broken evaluation can
    never let a model through.

    Raises:
        ValueError: a gated metric is missing from ``model``, ``baseline`` or ``oracle``.
    """
    results = []
    for metric in metrics:
        gate = metric.gate
        if gate is None:
            continue
        value = _value(model, metric.name, "model")
        if gate.max_gap_to_oracle is not None:
            best = _value(oracle, metric.name, "oracle")
            results.append(_gap_check(metric, value, best, gate.max_gap_to_oracle))
        if gate.must_beat_baseline:
            results.append(_baseline_check(metric, value, _value(baseline, metric.name, "baseline")))
    return results


def failures(results: Sequence[GateResult]) -> list[str]:
    """One line per failed check, ``"<metric> <check>: <detail>"``; empty when every gate passed."""
    return [f"{r.metric} {r.check}: {r.detail}" for r in results if not r.passed]


def judge(metrics: Sequence[MetricSpec], values: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The shared tail of every task's report: each scorer's metric ``values`` (``model``,
    ``baseline``, ``oracle``, ...), the gaps of model and baseline to the oracle, the gate results
    and whether all passed, as JSON-ready ``{"metrics", "oracle_gap", "gates", "passed"}``."""
    gaps = {
        scorer: {m.name: oracle_gap(m, values[scorer][m.name], values["oracle"][m.name]) for m in metrics}
        for scorer in ("model", "baseline")
    }
    gates = check_gates(metrics, model=values["model"], baseline=values["baseline"], oracle=values["oracle"])
    return {
        "metrics": {scorer: dict(v) for scorer, v in values.items()},
        "oracle_gap": gaps,
        "gates": [asdict(g) for g in gates],
        "passed": all(g.passed for g in gates),
    }
