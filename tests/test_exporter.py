"""The drift exporter: drift.json served to Prometheus over real HTTP, re-read at every scrape."""

from __future__ import annotations

import copy
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlsd.monitoring.exporter import (
    CANARY_METRICS,
    DRIFT_METRICS,
    RunningExporter,
    canary_metrics,
    start_drift_exporter,
)
from mlsd.telemetry import TELEMETRY_OFF
from tests.conftest import copy_project, mlsd_cli

REPORT: dict[str, Any] = {
    "generated_at": "2026-11-24T09:00:00+00:00",
    "problem": "ad_click",
    "window": {"start": "2026-11-24T08:00:00+00:00", "end": "2026-11-24T09:00:00+00:00"},
    "rows": {"reference": 20000, "current": 1500},
    "columns": {
        "hour": {
            "kind": "numerical",
            "method": "wasserstein",
            "threshold": 0.1,
            "score": 0.37,
            "drifted": True,
        },
        "category": {
            "kind": "categorical",
            "method": "jensenshannon",
            "threshold": 0.1,
            "score": 0.02,
            "drifted": False,
        },
    },
    "drifted_columns": ["hour"],
    "drifted_share": 0.5,
    "max_drifted_share": 0.3,
    "dataset_drift": True,
    "prediction": {
        "column": "score",
        "method": "wasserstein",
        "threshold": 0.1,
        "score": 0.05,
        "drifted": False,
        "mean_reference": 0.021,
        "mean_current": 0.024,
    },
    "quality": {
        "stable": {
            "requests": 1200,
            "labelled": 1100,
            "auc": 0.76,
            "log_loss": 0.09,
            "mean_score": 0.022,
            "observed_rate": 0.021,
            "calibration_ratio": 1.05,
        },
        "canary": {
            "requests": 300,
            "labelled": 280,
            "auc": None,
            "log_loss": 0.10,
            "mean_score": 0.02,
            "observed_rate": 0.0,
            "calibration_ratio": None,
        },
    },
    "retrain": {"needed": True, "reasons": ["data drift: 1/2 columns drifted (hour); share 0.50 > 0.30"]},
    "expired_views": {
        "user_velocity": {
            "ttl_s": 3600.0,
            "newest_row": "2026-11-24T00:00:00+00:00",
            "age_s": 32400.0,
            "fields": ["user_clicks_1h"],
        }
    },
}
STARTED = "2026-11-24T08:30:00.000+00:00"
# What `mlsd rollout analyze` writes for a canary the paired test found worse (rollback).
ANALYSIS: dict[str, Any] = {
    "generated_at": "2026-11-24T09:05:00+00:00",
    "canary_started": STARTED,
    "canary_tag": "ad_click:v2",
    "decision": "rollback",
    "reasons": ["online metric: on the same 4000 canary requests (paired) the canary's log loss is worse"],
    "failed": ["online_metric"],
    "stable": {"requests": 16000, "positive_rate": 0.03, "log_loss": 0.12},
    "canary": {"requests": 4000, "positive_rate": None, "log_loss": 0.125},
    "tests": {"log_loss_diff": 0.0031, "log_loss_diff_upper": 0.0042, "log_loss_worse_p": 0.001},
    "limits": {"log_loss_margin": 0.002, "alpha": 0.05},
    "applied": False,
}
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape as ``name{label=value,...}`` (labels sorted) -> value."""
    with NO_PROXY.open(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def write(path: Path, report: Any) -> None:
    path.write_text(json.dumps(report) if not isinstance(report, str) else report)


@pytest.fixture
def report_path(tmp_path: Path) -> Path:
    path = tmp_path / "drift.json"
    write(path, REPORT)
    return path


@pytest.fixture
def exporter(report_path: Path) -> Iterator[RunningExporter]:
    running = start_drift_exporter(report_path, "127.0.0.1", 0)
    yield running
    running.close()


def test_serves_every_number_of_the_report(exporter: RunningExporter) -> None:
    samples = scrape(exporter.url)
    assert samples == {
        "mlsd_drift_score{column=hour,method=wasserstein}": 0.37,
        "mlsd_drift_score{column=category,method=jensenshannon}": 0.02,
        "mlsd_drift_threshold{column=hour}": 0.1,
        "mlsd_drift_threshold{column=category}": 0.1,
        "mlsd_drift_detected{column=hour}": 1.0,
        "mlsd_drift_detected{column=category}": 0.0,
        "mlsd_drift_share": 0.5,
        "mlsd_drift_share_limit": 0.3,
        "mlsd_dataset_drift": 1.0,
        "mlsd_prediction_drift_score": 0.05,
        "mlsd_prediction_drift_threshold": 0.1,
        "mlsd_prediction_drift_detected": 0.0,
        "mlsd_prediction_mean{dataset=reference}": 0.021,
        "mlsd_prediction_mean{dataset=current}": 0.024,
        "mlsd_model_quality{metric=auc,variant=stable}": 0.76,
        "mlsd_model_quality{metric=log_loss,variant=stable}": 0.09,
        "mlsd_model_quality{metric=calibration_ratio,variant=stable}": 1.05,
        "mlsd_model_quality{metric=mean_score,variant=stable}": 0.022,
        "mlsd_model_quality{metric=observed_rate,variant=stable}": 0.021,
        # canary: auc and calibration_ratio are null, so absent (never a 0 that looks measured)
        "mlsd_model_quality{metric=log_loss,variant=canary}": 0.10,
        "mlsd_model_quality{metric=mean_score,variant=canary}": 0.02,
        "mlsd_model_quality{metric=observed_rate,variant=canary}": 0.0,
        "mlsd_feedback_rows{variant=stable}": 1100.0,
        "mlsd_feedback_rows{variant=canary}": 280.0,
        "mlsd_retrain_needed": 1.0,
        "mlsd_drift_report_timestamp_seconds": 1795510800.0,  # 2026-11-24T09:00:00Z
        "mlsd_drift_report_rows{dataset=reference}": 20000.0,
        "mlsd_drift_report_rows{dataset=current}": 1500.0,
        "mlsd_feature_view_expired{view=user_velocity}": 1.0,
        "mlsd_feature_view_age_seconds{view=user_velocity}": 32400.0,
        "mlsd_feature_view_ttl_seconds{view=user_velocity}": 3600.0,
        "mlsd_drift_report_up": 1.0,
    }
    # DRIFT_METRICS (what the rule and dashboard tests check against) is exactly what is served:
    # here all but the canary's, which test_the_running_canarys_verdict_is_served serves
    assert {name.partition("{")[0] for name in samples} == set(DRIFT_METRICS) - set(CANARY_METRICS)


def test_a_new_report_is_served_at_the_next_scrape(exporter: RunningExporter, report_path: Path) -> None:
    assert scrape(exporter.url)["mlsd_drift_share"] == 0.5
    newer = copy.deepcopy(REPORT)
    newer["generated_at"] = "2026-11-24T10:00:00Z"
    del newer["columns"]["hour"]
    newer["columns"]["category"].update(score=0.25, drifted=True)
    newer.update(drifted_share=1.0, max_drifted_share=0.5)
    newer["quality"]["canary"]["auc"] = 0.71
    newer["retrain"] = {"needed": False, "reasons": []}
    write(report_path, newer)
    samples = scrape(exporter.url)
    assert samples["mlsd_drift_report_timestamp_seconds"] == 1795510800.0 + 3600
    assert samples["mlsd_drift_score{column=category,method=jensenshannon}"] == 0.25
    assert samples["mlsd_drift_detected{column=category}"] == 1.0
    assert not any("column=hour" in name for name in samples), "a column gone from the report is still served"
    assert samples["mlsd_drift_share"] == 1.0
    assert samples["mlsd_drift_share_limit"] == 0.5
    assert samples["mlsd_model_quality{metric=auc,variant=canary}"] == 0.71
    assert samples["mlsd_retrain_needed"] == 0.0
    assert samples["mlsd_drift_report_up"] == 1.0


def _with(**changes: Any) -> dict[str, Any]:
    report = copy.deepcopy(REPORT)
    report.update(changes)
    return report


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (None, "FileNotFoundError"),
        ("", "JSONDecodeError"),
        (json.dumps(REPORT)[:200], "JSONDecodeError"),  # half-written by the pipeline
        ("[1, 2]", "expected an object, got list"),
        ("{}", "the report is empty"),
        (_with(generated_at=None), "generated_at"),
        (_with(generated_at="yesterday"), "generated_at: expected an ISO 8601 time"),
        (_with(drifted_share="0.5"), "drifted_share: expected a number or null"),
        (_with(dataset_drift=1), "dataset_drift: expected true, false or null"),
        (_with(columns={"hour": {"score": 0.3, "drifted": True}}), "columns.hour.method"),
        (_with(quality={"canary": [0.1]}), "quality.canary: expected an object"),
        (_with(retrain={"needed": "yes"}), "retrain.needed"),
    ],
)
def test_a_missing_or_broken_report_is_up_0_and_nothing_else(
    exporter: RunningExporter,
    report_path: Path,
    content: Any,
    named: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if content is None:
        report_path.unlink()
    else:
        write(report_path, content)
    with caplog.at_level(logging.WARNING, logger="mlsd.monitoring.exporter"):
        assert scrape(exporter.url) == {"mlsd_drift_report_up": 0.0}  # a 200, no stale or partial numbers
    assert str(report_path) in caplog.text
    assert named in caplog.text
    write(report_path, REPORT)  # repaired: served again with no restart
    assert scrape(exporter.url)["mlsd_drift_report_up"] == 1.0


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process in UTC+9, so a naive time read as local time would be off by 9 hours."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_timezone")
def test_values_that_could_not_be_computed_are_left_out(exporter: RunningExporter, report_path: Path) -> None:
    # below monitoring.min_rows the pipeline writes no drift verdict; NaN is as unknown as null
    report = {
        "generated_at": "2026-11-24T09:00:00",  # no offset: UTC
        "rows": {"reference": 20000, "current": 50},
        "status": "50 served requests in the window; drift needs 200",
        "quality": {"stable": {"labelled": 40, "auc": float("nan"), "log_loss": 0.2}},
        "retrain": {"needed": False, "reasons": []},
    }
    write(report_path, report)
    assert scrape(exporter.url) == {
        "mlsd_model_quality{metric=log_loss,variant=stable}": 0.2,
        "mlsd_feedback_rows{variant=stable}": 40.0,
        "mlsd_retrain_needed": 0.0,
        "mlsd_drift_report_timestamp_seconds": 1795510800.0,
        "mlsd_drift_report_rows{dataset=reference}": 20000.0,
        "mlsd_drift_report_rows{dataset=current}": 50.0,
        "mlsd_drift_report_up": 1.0,
    }


class Rollout:
    """The running canary as the rollout file says: ``(tag, started)``, None, or a broken file."""

    def __init__(self) -> None:
        self.canary: tuple[str, str | None] | None = ("ad_click:v2", STARTED)
        self.broken = False

    def __call__(self) -> tuple[str, str | None] | None:
        if self.broken:
            raise ValueError("deployment/rollout.yaml: canary.percent: Input should be a valid number")
        return self.canary


@pytest.fixture
def canary_path(tmp_path: Path) -> Path:
    path = tmp_path / "canary_analysis.json"
    write(path, ANALYSIS)
    return path


def test_the_running_canarys_verdict_is_served_and_ends_with_it(report_path: Path, canary_path: Path) -> None:
    """The alert's gauges are the analysis's verdict, for the canary run it judged only: a promotion
    or rollback (no canary), a restart of the same tag, or an applied verdict end them."""
    rollout = Rollout()
    running = start_drift_exporter(report_path, "127.0.0.1", 0, canary_path, rollout)
    try:
        samples = scrape(running.url)
        canary = {k: v for k, v in samples.items() if k.startswith("mlsd_canary_")}
        assert canary == {
            "mlsd_canary_verdict{canary=ad_click:v2,decision=promote}": 0.0,
            "mlsd_canary_verdict{canary=ad_click:v2,decision=rollback}": 1.0,
            "mlsd_canary_verdict{canary=ad_click:v2,decision=keep_collecting}": 0.0,
            "mlsd_canary_check_failed{canary=ad_click:v2,check=errors}": 0.0,
            "mlsd_canary_check_failed{canary=ad_click:v2,check=latency}": 0.0,
            "mlsd_canary_check_failed{canary=ad_click:v2,check=online_metric}": 1.0,
            "mlsd_canary_check_failed{canary=ad_click:v2,check=ranking}": 0.0,
            "mlsd_canary_log_loss_diff{canary=ad_click:v2}": 0.0031,
            "mlsd_canary_log_loss_diff_upper{canary=ad_click:v2}": 0.0042,
            "mlsd_canary_log_loss_margin{canary=ad_click:v2}": 0.002,
            "mlsd_canary_analysis_timestamp_seconds{canary=ad_click:v2}": 1795510800.0 + 300,
            "mlsd_canary_analysis_up": 1.0,
        }
        assert {name.partition("{")[0] for name in canary} == set(CANARY_METRICS)
        assert samples["mlsd_drift_share"] == 0.5  # the drift report is served alongside
        rollout.canary = None  # rolled back (or promoted): the verdict is history
        assert [k for k in scrape(running.url) if k.startswith("mlsd_canary_")] == ["mlsd_canary_analysis_up"]
        rollout.canary = ("ad_click:v2", "2026-11-24T10:00:00.000+00:00")  # the same tag, started again
        assert [k for k in scrape(running.url) if k.startswith("mlsd_canary_")] == ["mlsd_canary_analysis_up"]
        rollout.canary = ("ad_click:v2", STARTED)
        write(canary_path, {**ANALYSIS, "applied": True})  # the analysis rolled it back itself
        assert [k for k in scrape(running.url) if k.startswith("mlsd_canary_")] == ["mlsd_canary_analysis_up"]
        older = {k: v for k, v in ANALYSIS.items() if k != "canary_started"}  # a file without the start
        write(canary_path, older)
        assert scrape(running.url)["mlsd_canary_verdict{canary=ad_click:v2,decision=rollback}"] == 1.0
        write(canary_path, {**older, "generated_at": "2026-11-24T08:00:00+00:00"})  # before this run
        assert "mlsd_canary_verdict{canary=ad_click:v2,decision=rollback}" not in scrape(running.url)
    finally:
        running.close()


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{", "JSONDecodeError"),
        ({**ANALYSIS, "decision": "ship it"}, "decision: expected one of"),
        ({**ANALYSIS, "tests": {"log_loss_diff": "big"}}, "tests.log_loss_diff: expected a number"),
        ("rollout", "valid number"),
    ],
)
def test_a_broken_canary_analysis_or_rollout_is_canary_up_0_and_drift_is_still_served(
    report_path: Path, canary_path: Path, content: Any, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    rollout = Rollout()
    if content == "rollout":
        rollout.broken = True
    else:
        write(canary_path, content)
    running = start_drift_exporter(report_path, "127.0.0.1", 0, canary_path, rollout)
    try:
        with caplog.at_level(logging.WARNING, logger="mlsd.monitoring.exporter"):
            samples = scrape(running.url)
        assert [k for k in samples if k.startswith("mlsd_canary_")] == ["mlsd_canary_analysis_up"]
        assert samples["mlsd_canary_analysis_up"] == 0.0
        assert samples["mlsd_drift_report_up"] == 1.0
        assert named in caplog.text
    finally:
        running.close()


def test_no_analysis_yet_or_no_canary_serves_no_verdict(canary_path: Path) -> None:
    canary_path.unlink()
    assert canary_metrics(None, ("ad_click:v2", STARTED)) == []
    assert canary_metrics(ANALYSIS, None) == []
    assert canary_metrics({**ANALYSIS, "decision": None}, ("ad_click:v2", STARTED)) == []
    assert canary_metrics(ANALYSIS, ("ad_click:v3", STARTED)) == []


def test_the_global_registry_is_left_alone(exporter: RunningExporter) -> None:
    scrape(exporter.url)
    names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not names & set(DRIFT_METRICS)


@pytest.mark.slow
def test_mlsd_monitor_exporter_serves_the_configured_report_until_sigterm(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    catalog = "drift_summary:\n  type: json.JSONDataset\n  filepath: reports/drift.json\n"
    (project / "conf" / "local" / "catalog.yml").write_text(catalog)
    (project / "reports").mkdir()
    write(project / "reports" / "drift.json", REPORT)
    # The running canary (the rollout file) and its analysis where the catalog keeps it.
    (project / "deployment").mkdir()
    canary = {"tag": "ad_click:v2", "percent": 20, "started": STARTED}
    (project / "deployment" / "rollout.yaml").write_text(yaml.safe_dump({"canary": canary}))
    (project / "data" / "08_reporting").mkdir(parents=True)
    write(project / "data" / "08_reporting" / "canary_analysis.json", ANALYSIS)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlsd.commands",
            "--project",
            str(project),
            "monitor",
            "exporter",
            "--port",
            "0",
        ],
        cwd=tmp_path,
        env={**TELEMETRY_OFF, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert proc.stdout is not None
        line = proc.stdout.readline() if ready else ""
        assert "/metrics" in line, f"no URL announced: {line!r}; {proc.poll()=}"
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert str(project / "reports" / "drift.json") in line
        samples = scrape(url)
        assert samples["mlsd_drift_share"] == 0.5
        assert samples["mlsd_model_quality{metric=log_loss,variant=canary}"] == 0.10
        assert samples["mlsd_canary_verdict{canary=ad_click:v2,decision=rollback}"] == 1.0
        assert samples["mlsd_canary_check_failed{canary=ad_click:v2,check=online_metric}"] == 1.0
        (project / "deployment" / "rollout.yaml").write_text("canary: null\n")  # rolled back
        assert "mlsd_canary_verdict{canary=ad_click:v2,decision=rollback}" not in scrape(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.slow
def test_mlsd_monitor_exporter_names_a_port_in_use(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mlsd_cli(project, "--project", str(project), "monitor", "exporter", "--port", str(port))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot serve drift metrics on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr


def test_the_canary_checks_served_are_the_analysiss() -> None:
    from mlsd.monitoring import canary, gauges

    assert gauges.CHECKS == canary.CHECKS  # a check the analysis adds gets its gauge
