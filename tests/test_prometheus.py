"""Prometheus config, alert rules and their unit tests, checked by the real promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlsd.serving import metrics
from tests.conftest import ROOT

PROMETHEUS = ROOT / "monitoring" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool (Debian package prometheus) is not installed; .ci/run installs it",
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_config_and_its_rule_files_are_valid() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", *sorted((PROMETHEUS / "tests").glob("*_test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def _exported() -> set[str]:
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {value._name + s for value in vars(metrics).values() if hasattr(value, "_name") for s in suffixes}


def _metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\b(mlsd_[a-z_]+)", expr)}


def test_rules_only_use_metrics_the_service_exports() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "serving.yml").read_text())
    used = _metric_names([rule["expr"] for group in rules["groups"] for rule in group["rules"]])
    assert used
    assert used <= _exported(), f"rules use metrics the service does not export: {sorted(used - _exported())}"


def test_grafana_dashboard_queries_exported_metrics_and_parses_in_promtool(tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "monitoring" / "grafana" / "serving.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = _metric_names(expressions)
    assert used <= _exported(), (
        f"panels use metrics the service does not export: {sorted(used - _exported())}"
    )
    assert len({p["gridPos"]["y"] * 100 + p["gridPos"]["x"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
    for expr in expressions:  # every query is valid PromQL (promtool parses it as a rule)
        rule = {"groups": [{"name": "panel", "rules": [{"record": "panel:check", "expr": expr}]}]}
        path = tmp_path / "panel.yml"
        path.write_text(yaml.safe_dump(rule))
        result = promtool("check", "rules", path)
        assert result.returncode == 0, f"{expr}: {result.stdout}{result.stderr}"
