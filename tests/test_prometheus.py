"""Prometheus config, alert rules and their unit tests, checked by the real promtool."""

from __future__ import annotations

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


def test_rules_only_use_metrics_the_service_exports() -> None:
    exported = {
        name
        for value in vars(metrics).values()
        if hasattr(value, "_name")
        for name in (value._name, f"{value._name}_total", f"{value._name}_bucket")
    }
    rules = yaml.safe_load((PROMETHEUS / "rules" / "serving.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(mlsd_[a-z_]+)", rule["expr"])
    }
    assert used
    assert used <= exported, f"rules use metrics the service does not export: {sorted(used - exported)}"
