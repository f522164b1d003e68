"""Prometheus exporter of the drift report (``drift.json``) that ``kedro run --pipelines monitoring`` writes.

The report is read again at every scrape, so a new one is served with no restart, and Prometheus
keeps the history the report itself does not. The alert rules (monitoring/prometheus/rules/drift.yml)
compare it with the limits the report carries (``max_drifted_share``, each column's threshold),
so the spec stays the one place those numbers are set.

A missing, half-written or malformed report is ``mlsd_drift_report_up 0`` and nothing else: no
partial numbers an alert or a dashboard could take for the current state. Fields the pipeline
could not compute (null, NaN, or absent, e.g. AUC with one class, drift below ``min_rows``) are
left out rather than exported as 0.

The canary gauges (``mlsd_canary_*``) come from the latest canary analysis
(``canary_analysis.json``, written by ``mlsd rollout analyze`` and the monitoring pipeline) and
are served only while the canary it judged still runs (same tag and start in the rollout file):
the alert on them is the analysis's own verdict, and it ends at the first scrape after a
promotion or a rollback. They are read independently of the drift report;
``mlsd_canary_analysis_up 0`` says one of their files is broken.

    mlsd monitor exporter [--report PATH] [--host 127.0.0.1] [--port 9108]
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from mlsd.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108  # the mlsd-drift job of monitoring/prometheus/prometheus.yml scrapes it
DEFAULT_REPORT = "data/08_reporting/drift.json"  # relative to the project (catalog drift_summary)
DEFAULT_CANARY_REPORT = "data/08_reporting/canary_analysis.json"  # catalog canary_analysis
CanaryNow = Callable[[], "tuple[str, str | None] | None"]
"""The running canary's ``(tag, started)`` from the rollout file (None: no canary); raises when
the file cannot be read."""

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


class DriftReportCollector:
    """A prometheus_client collector that reads ``path`` at every scrape, and with ``canary_path``
    and ``canary_now`` the canary analysis of the canary that runs now.

    ``collect`` never raises for a bad file: it yields ``mlsd_drift_report_up 0`` (or
    ``mlsd_canary_analysis_up 0``) instead of that file's gauges and logs why once (again only
    when the reason changes), so a broken report is an alert, not a 500.
    """

    def __init__(
        self, path: Path, canary_path: Path | None = None, canary_now: CanaryNow | None = None
    ) -> None:
        self.path, self.canary_path, self.canary_now = path, canary_path, canary_now
        self._problems: dict[str, str | None] = {}
        self._lock = threading.Lock()  # scrapes may run concurrently (threading server)

    def collect(self) -> Iterator[Metric]:
        try:
            families = report_metrics(json.loads(self.path.read_text(encoding="utf-8")))
        except Exception as exc:  # whatever is wrong with the file, the scrape still answers
            self._note("drift", f"{self.path}: {type(exc).__name__}: {exc}")
            yield _up(REPORT_UP, 0)
        else:
            self._note("drift", None)
            yield from families
            yield _up(REPORT_UP, 1)
        yield from self._canary()

    def _canary(self) -> Iterator[Metric]:
        if self.canary_path is None or self.canary_now is None:
            return
        try:
            running = self.canary_now()
            analysis = None
            if running is not None and self.canary_path.is_file():  # no analysis yet: no verdict
                analysis = json.loads(self.canary_path.read_text(encoding="utf-8"))
            families = canary_metrics(analysis, running)
        except Exception as exc:  # a broken rollout file or analysis: up 0, the scrape answers
            self._note("canary", f"{self.canary_path}: {type(exc).__name__}: {exc}")
            yield _up(CANARY_UP, 0)
            return
        self._note("canary", None)
        yield from families
        yield _up(CANARY_UP, 1)

    def _note(self, source: str, problem: str | None) -> None:
        with self._lock:
            if problem != self._problems.get(source) and problem is not None:
                log.warning("%s report unreadable (its _up gauge is 0): %s", source, problem)
            self._problems[source] = problem


def _up(name: str, value: int) -> Metric:
    doc, _ = _GAUGES[name]
    return GaugeMetricFamily(name, doc, value=value)


def drift_registry(
    report: Path, canary_report: Path | None = None, canary_now: CanaryNow | None = None
) -> CollectorRegistry:
    """A registry of its own (not the global one) holding only the collector of ``report`` (and of
    the canary analysis, when given)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriftReportCollector(report, canary_report, canary_now))
    return registry


@dataclass
class RunningExporter:
    """A started exporter: where it answers, and ``close()`` to stop it."""

    url: str
    server: Any
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_drift_exporter(
    report: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    canary_report: Path | None = None,
    canary_now: CanaryNow | None = None,
) -> RunningExporter:
    """Serve ``report`` (and the canary analysis ``canary_report`` of the canary ``canary_now``
    names) as Prometheus metrics on http://host:port/metrics from a daemon thread.

    ``port`` 0 picks a free one (see the returned ``url``). The files need not exist yet.

    Raises:
        ConfigError: the address cannot be bound (in use, or not this machine's).
    """
    registry = drift_registry(report, canary_report, canary_now)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve drift metrics on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    return RunningExporter(f"http://{shown}:{server.server_port}/metrics", server, thread)


def serve_drift_metrics(
    report: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    announce: Callable[[str], None] | None = None,
    canary_report: Path | None = None,
    canary_now: CanaryNow | None = None,
) -> None:
    """Serve ``report`` until SIGINT or SIGTERM (call from the main thread); ``announce`` gets the URL.

    Raises:
        ConfigError: the address cannot be bound.
    """
    exporter = start_drift_exporter(report, host, port, canary_report, canary_now)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if announce is not None:
            announce(exporter.url)
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        exporter.close()
