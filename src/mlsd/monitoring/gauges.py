"""The gauges of the drift report (``drift.json``) and of the running canary's analysis
(``canary_analysis.json``), as prometheus_client metric families: what mlsd.monitoring.exporter
serves at each scrape. Fields the pipeline could not compute (null, NaN, absent) are left out,
never exported as 0; a field of the wrong type is a ValueError naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

REPORT_UP = "mlsd_drift_report_up"
CANARY_UP = "mlsd_canary_analysis_up"
DECISIONS = ("promote", "rollback", "keep_collecting")
CHECKS = ("errors", "latency", "online_metric", "ranking")  # mlsd.monitoring.canary.CHECKS
# name -> (help, label names). Every gauge the exporter can yield; the order is the exposition's.
_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlsd_drift_score": ("Drift distance of a column, current window vs reference", ("column", "method")),
    "mlsd_drift_threshold": ("Distance at which a column counts as drifted", ("column",)),
    "mlsd_drift_detected": ("1 when the column's drift score reached its threshold", ("column",)),
    "mlsd_drift_share": ("Share of the drift columns that drifted", ()),
    "mlsd_drift_share_limit": ("The spec's max_drifted_share: above it the dataset has drifted", ()),
    "mlsd_dataset_drift": ("1 when the drifted share is above the limit", ()),
    "mlsd_prediction_drift_score": ("Drift distance of the model's score, current vs reference", ()),
    "mlsd_prediction_drift_threshold": ("Distance at which the score counts as drifted", ()),
    "mlsd_prediction_drift_detected": ("1 when the score's drift reached its threshold", ()),
    "mlsd_prediction_mean": ("Mean score, reference sample vs current window", ("dataset",)),
    "mlsd_model_quality": ("Online quality of a variant on its labelled requests", ("variant", "metric")),
    "mlsd_feedback_rows": ("Requests of a variant with feedback (labelled) in the window", ("variant",)),
    "mlsd_retrain_needed": ("1 when drift or online quality calls for retraining", ()),
    "mlsd_drift_report_timestamp_seconds": ("When the report was generated (unix time)", ()),
    "mlsd_drift_report_rows": ("Rows compared, by dataset (reference, current)", ("dataset",)),
    "mlsd_feature_view_expired": (
        "1 for a view whose newest stored row is older than its TTL: every request gets its defaults",
        ("view",),
    ),
    "mlsd_feature_view_age_seconds": ("Age of an expired view's newest stored row", ("view",)),
    "mlsd_feature_view_ttl_seconds": ("TTL of an expired view", ("view",)),
    REPORT_UP: ("1 when the drift report was read and parsed, 0 when it is missing or broken", ()),
    "mlsd_canary_verdict": (
        "The latest analysis of the running canary: 1 for its decision, 0 for the other two",
        ("canary", "decision"),
    ),
    "mlsd_canary_check_failed": (
        "1 when the analysis failed the running canary on a check (errors, latency, online_metric, ranking)",
        ("canary", "check"),
    ),
    "mlsd_canary_log_loss_diff": ("Canary minus stable log loss over the requests compared", ("canary",)),
    "mlsd_canary_log_loss_diff_upper": ("One-sided upper confidence bound of that difference", ("canary",)),
    "mlsd_canary_log_loss_margin": ("How much worse the canary may be (log_loss_margin)", ("canary",)),
    "mlsd_canary_analysis_timestamp_seconds": (
        "When the running canary was analyzed (unix time)",
        ("canary",),
    ),
    CANARY_UP: ("1 when the canary analysis and the rollout file could be read (or are absent)", ()),
}
DRIFT_METRICS: tuple[str, ...] = tuple(_GAUGES)
CANARY_METRICS: tuple[str, ...] = tuple(name for name in _GAUGES if name.startswith("mlsd_canary_"))
"""The gauges of the canary analysis (served only with a canary report and a running canary)."""
QUALITY_METRICS = ("auc", "log_loss", "calibration_ratio", "mean_score", "observed_rate")


class _Gauges:
    """The gauge families of one scrape, created on first use so empty ones are left out."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        doc, names = _GAUGES[name]
        if set(labels) != set(names):
            raise TypeError(f"{name} takes labels {names}, got {sorted(labels)}")  # a bug here, not the file
        if name not in self._families:
            self._families[name] = GaugeMetricFamily(name, doc, labels=list(names))
        self._families[name].add_metric([labels[n] for n in names], value)

    def families(self) -> list[Metric]:
        return [self._families[name] for name in DRIFT_METRICS if name in self._families]


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> float | None:
    """A finite number, or None for null/NaN (not computable): never exported as 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: expected a number or null, got {value!r}")
    return float(value) if math.isfinite(value) else None


def _flag(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected true, false or null, got {value!r}")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _timestamp(value: Any) -> float:
    """``generated_at`` as unix seconds (ISO 8601; without an offset it is taken as UTC)."""
    try:
        stamp = datetime.fromisoformat(_text(value, "generated_at"))
    except ValueError as exc:
        raise ValueError(f"generated_at: expected an ISO 8601 time, got {value!r}") from exc
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def report_metrics(report: Any) -> list[Metric]:
    """The gauges of one parsed drift report, ``mlsd_drift_report_up`` excluded.

    ``generated_at`` is required (the staleness alert needs it); every other field may be null or
    absent and is then left out.

    Raises:
        ValueError: the report is not an object, has no ``generated_at``, or a field has the wrong
            type; the message names the field.
    """
    report = _object(report, "the report")
    if not report:
        raise ValueError("the report is empty: expected an object with generated_at")
    out = _Gauges()
    out.add("mlsd_drift_report_timestamp_seconds", _timestamp(report.get("generated_at")))
    for dataset, rows in _object(report.get("rows"), "rows").items():
        out.add("mlsd_drift_report_rows", _number(rows, f"rows.{dataset}"), dataset=dataset)
    for column, entry in _object(report.get("columns"), "columns").items():
        where = f"columns.{column}"
        entry = _object(entry, where)
        score = _number(entry.get("score"), f"{where}.score")
        if score is not None:
            method = _text(entry.get("method"), f"{where}.method")
            out.add("mlsd_drift_score", score, column=column, method=method)
        out.add("mlsd_drift_threshold", _number(entry.get("threshold"), f"{where}.threshold"), column=column)
        out.add("mlsd_drift_detected", _flag(entry.get("drifted"), f"{where}.drifted"), column=column)
    out.add("mlsd_drift_share", _number(report.get("drifted_share"), "drifted_share"))
    out.add("mlsd_drift_share_limit", _number(report.get("max_drifted_share"), "max_drifted_share"))
    out.add("mlsd_dataset_drift", _flag(report.get("dataset_drift"), "dataset_drift"))
    prediction = _object(report.get("prediction"), "prediction")
    out.add("mlsd_prediction_drift_score", _number(prediction.get("score"), "prediction.score"))
    out.add("mlsd_prediction_drift_threshold", _number(prediction.get("threshold"), "prediction.threshold"))
    out.add("mlsd_prediction_drift_detected", _flag(prediction.get("drifted"), "prediction.drifted"))
    for dataset in ("reference", "current"):
        mean = _number(prediction.get(f"mean_{dataset}"), f"prediction.mean_{dataset}")
        out.add("mlsd_prediction_mean", mean, dataset=dataset)
    for variant, numbers in _object(report.get("quality"), "quality").items():
        numbers = _object(numbers, f"quality.{variant}")
        for metric in QUALITY_METRICS:
            value = _number(numbers.get(metric), f"quality.{variant}.{metric}")
            out.add("mlsd_model_quality", value, variant=variant, metric=metric)
        labelled = _number(numbers.get("labelled"), f"quality.{variant}.labelled")
        out.add("mlsd_feedback_rows", labelled, variant=variant)
    retrain = _object(report.get("retrain"), "retrain")
    out.add("mlsd_retrain_needed", _flag(retrain.get("needed"), "retrain.needed"))
    for view, info in _object(report.get("expired_views"), "expired_views").items():
        info = _object(info, f"expired_views.{view}")
        out.add("mlsd_feature_view_expired", 1.0, view=view)
        out.add("mlsd_feature_view_age_seconds", _number(info.get("age_s"), f"{view}.age_s"), view=view)
        out.add("mlsd_feature_view_ttl_seconds", _number(info.get("ttl_s"), f"{view}.ttl_s"), view=view)
    return out.families()


def _judges(analysis: Mapping[str, Any], tag: str, started: str | None) -> bool:
    """Whether ``analysis`` is about the canary run ``(tag, started)`` and was not acted on."""
    if analysis.get("canary_tag") != tag or analysis.get("applied"):
        return False
    if started is None:
        return True
    judged = analysis.get("canary_started")
    if judged is not None:
        return bool(judged == started)
    # an analysis without the start (older files): one made after this run began is about it
    return _timestamp(analysis.get("generated_at")) >= _timestamp(started)


def canary_metrics(analysis: Any, running: tuple[str, str | None] | None) -> list[Metric]:
    """The gauges of a canary analysis while the canary it judged runs (else none).

    Raises:
        ValueError: the analysis is not an object or a field has the wrong type (named).
    """
    if running is None or analysis is None:
        return []
    analysis = _object(analysis, "the canary analysis")
    tag, started = running
    decision = analysis.get("decision")
    if decision is None or not _judges(analysis, tag, started):
        return []
    if decision not in DECISIONS:
        raise ValueError(f"decision: expected one of {DECISIONS}, got {decision!r}")
    out = _Gauges()
    for name in DECISIONS:
        out.add("mlsd_canary_verdict", float(name == decision), canary=tag, decision=name)
    failed = analysis.get("failed")
    if isinstance(failed, list):
        for check in CHECKS:
            out.add("mlsd_canary_check_failed", float(check in failed), canary=tag, check=check)
    tests = _object(analysis.get("tests"), "tests")
    out.add(
        "mlsd_canary_log_loss_diff", _number(tests.get("log_loss_diff"), "tests.log_loss_diff"), canary=tag
    )
    upper = _number(tests.get("log_loss_diff_upper"), "tests.log_loss_diff_upper")
    out.add("mlsd_canary_log_loss_diff_upper", upper, canary=tag)
    limits = _object(analysis.get("limits"), "limits")
    margin = _number(limits.get("log_loss_margin"), "limits.log_loss_margin")
    out.add("mlsd_canary_log_loss_margin", margin, canary=tag)
    if analysis.get("generated_at") is not None:
        stamp = _timestamp(analysis.get("generated_at"))
        out.add("mlsd_canary_analysis_timestamp_seconds", stamp, canary=tag)
    return out.families()


def up(name: str, value: int) -> Metric:
    """``mlsd_drift_report_up`` or ``mlsd_canary_analysis_up`` with ``value``."""
    doc, _ = _GAUGES[name]
    return GaugeMetricFamily(name, doc, value=value)
