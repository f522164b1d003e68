"""Prometheus config, alert rules and their unit tests, checked by the real promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mlsd.monitoring import exporter
from mlsd.serving import metrics
from tests.conftest import ROOT
from tests.tools import required

PROMETHEUS = ROOT / "monitoring" / "prometheus"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = required("promtool", "prometheus")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_config_and_its_rule_files_are_valid() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout
    for rules in ("serving.yml", "drift.yml"):
        assert f"Checking {PROMETHEUS / 'rules' / rules}\n  SUCCESS" in result.stdout, result.stdout


def test_drift_job_scrapes_the_exporters_default_address() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs["mlsd-drift"]["static_configs"] for t in group["targets"]]
    assert targets == [f"{exporter.DEFAULT_HOST}:{exporter.DEFAULT_PORT}"]


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", *sorted((PROMETHEUS / "tests").glob("*_test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def _serving_metrics() -> set[str]:
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {value._name + s for value in vars(metrics).values() if hasattr(value, "_name") for s in suffixes}


def _exported(name: str) -> set[str]:
    """The metrics behind a rule file or dashboard: the service's, or the drift exporter's gauges."""
    return {"serving": _serving_metrics, "drift": lambda: set(exporter.DRIFT_METRICS)}[name]()


def _metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\b(mlsd_[a-z_]+)", expr)}


def _rules(name: str) -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / f"{name}.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("name", ["serving", "drift"])
def test_rules_only_use_metrics_their_source_exports(name: str) -> None:
    used = _metric_names([rule["expr"] for rule in _rules(name)])
    assert used
    # annotations may query metrics too (the drifted columns, the mean scores)
    used |= _metric_names([text for rule in _rules(name) for text in rule.get("annotations", {}).values()])
    assert used <= _exported(name), (
        f"{name} rules use metrics nobody exports: {sorted(used - _exported(name))}"
    )


def test_every_drift_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in _rules("drift") if "alert" in rule}
    tests = yaml.safe_load((PROMETHEUS / "tests" / "drift_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert len(alerts) == 7
    assert alerts <= fired, f"no test where these fire: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"no test where these stay quiet: {sorted(alerts - quiet)}"


@pytest.mark.parametrize("name", ["serving", "drift"])
def test_grafana_dashboard_queries_exported_metrics_and_parses_in_promtool(name: str, tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "monitoring" / "grafana" / f"{name}.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = _metric_names(expressions)
    assert used
    assert used <= _exported(name), (
        f"{name} panels use metrics nobody exports: {sorted(used - _exported(name))}"
    )
    assert len({p["gridPos"]["y"] * 100 + p["gridPos"]["x"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for expr in expressions:  # every query is valid PromQL (promtool parses it as a rule)
        rule = {"groups": [{"name": "panel", "rules": [{"record": "panel:check", "expr": expr}]}]}
        path = tmp_path / "panel.yml"
        path.write_text(yaml.safe_dump(rule))
        result = promtool("check", "rules", path)
        assert result.returncode == 0, f"{expr}: {result.stdout}{result.stderr}"
