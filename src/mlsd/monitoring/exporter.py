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
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric

from mlsd.errors import ConfigError
from mlsd.monitoring.gauges import (
    CANARY_METRICS,
    CANARY_UP,
    DRIFT_METRICS,
    REPORT_UP,
    canary_metrics,
    report_metrics,
    up,
)

__all__ = [
    "CANARY_METRICS",
    "DEFAULT_CANARY_REPORT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_REPORT",
    "DRIFT_METRICS",
    "CanaryNow",
    "DriftReportCollector",
    "RunningExporter",
    "canary_metrics",
    "drift_registry",
    "report_metrics",
    "serve_drift_metrics",
    "start_drift_exporter",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108  # the mlsd-drift job of monitoring/prometheus/prometheus.yml scrapes it
DEFAULT_REPORT = "data/08_reporting/drift.json"  # relative to the project (catalog drift_summary)
DEFAULT_CANARY_REPORT = "data/08_reporting/canary_analysis.json"  # catalog canary_analysis
CanaryNow = Callable[[], "tuple[str, str | None] | None"]
"""The running canary's ``(tag, started)`` from the rollout file (None: no canary); raises when
the file cannot be read."""


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
            yield up(REPORT_UP, 0)
        else:
            self._note("drift", None)
            yield from families
            yield up(REPORT_UP, 1)
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
            yield up(CANARY_UP, 0)
            return
        self._note("canary", None)
        yield from families
        yield up(CANARY_UP, 1)

    def _note(self, source: str, problem: str | None) -> None:
        with self._lock:
            if problem != self._problems.get(source) and problem is not None:
                log.warning("%s report unreadable (its _up gauge is 0): %s", source, problem)
            self._problems[source] = problem


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
