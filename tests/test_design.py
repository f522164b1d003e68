"""The design document: six interview sections from the spec, the Measured section from reports,
deterministic output, `mlsd design --check`, and the `kedro run` node that rewrites it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsd.design import BEGIN, END, NOT_MEASURED, missing_design, render_design
from mlsd.design.checks import table_checks, training_set_checks
from mlsd.design_doc import check_design
from mlsd.errors import ConfigError
from mlsd.pipelines.datasets import OptionalJSONDataset
from mlsd.spec import load_spec, spec_from_mapping
from mlsd.telemetry import TELEMETRY_OFF
from mlsd.validation.suite import DTYPE_CHECK, REFERENCE_CHECK, table_suite, training_set_suite
from tests.conftest import ROOT, copy_project

SPEC_FILE = ROOT / "conf" / "base" / "problem.yml"
SECTIONS = [
    "## 1. Clarify requirements",
    "## 2. Data pipeline",
    "## 3. Model",
    "## 4. Training and evaluation",
    "## 5. Deployment and serving",
    "## 6. Wrap-up",
    "## Measured",
]


@pytest.fixture(scope="module")
def parameters() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "conf" / "base" / "parameters.yml").read_text()))


def _spec_mapping() -> dict[str, Any]:
    return dict(yaml.safe_load(SPEC_FILE.read_text())["problem"])


def _line(text: str, start: str) -> str:
    """The one line of ``text`` that starts with ``start``."""
    found = [line for line in text.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def _evaluation(auc_model: float = 0.7712, passed: bool = True) -> dict[str, Any]:
    metrics = {
        "model": {"auc": auc_model, "log_loss": 0.1401},
        "baseline": {"auc": 0.7523, "log_loss": 0.1432},
        "oracle": {"auc": 0.7963, "log_loss": 0.1377},
    }
    gate = {"metric": "auc", "check": "max_gap_to_oracle", "passed": passed, "detail": "auc gap detail"}
    return {
        "holdout": {
            "start": "2026-01-12T00:00:00+00:00",
            "end": "2026-01-14T00:00:00+00:00",
            "rows": 28648,
            "positives": 860,
            "base_rate": 0.03002,
        },
        "metrics": metrics,
        "oracle_gap": {"model": {"auc": 0.7963 - auc_model, "log_loss": 0.0024}, "baseline": {}},
        "gates": [gate],
        "passed": passed,
    }


def test_ad_click_renders_every_section_with_its_numbers(parameters: dict[str, Any]) -> None:
    spec = load_spec(SPEC_FILE)
    text = render_design(spec, parameters)
    positions = [text.index(heading) for heading in SECTIONS]
    assert positions == sorted(positions)
    assert "```mermaid" in text
    assert spec.question in text
    assert spec.design is not None
    assert spec.design.objective in text
    assert "**Latency budget:** 150 ms" in text
    for name, value in {"peak qps": "150,000", "impressions per day": "5,000,000,000"}.items():
        assert f"| {name} | {value} |" in text
    for constraint in [*spec.design.constraints, *spec.design.bottlenecks, *spec.design.tradeoffs]:
        assert f"- {constraint}" in text
    assert "| `auc` (tuning target) | higher |  | gap to oracle <= 0.03; beats the baseline |" in text
    drift = _line(text, "- **Drift columns:**")
    assert all(f"`{column}`" in drift for column in spec.drift.columns)
    assert "more than 30% of the drift columns drifted" in text
    assert "the last `2d` are the holdout" in text
    assert "samples `4` configurations" in text
    assert "| `user_ctr` | `user` | 1d | yes |" in text
    table = text[text.index("### Model inputs, in order") : text.index("### Export")]
    rows = [line.split(" | ") for line in table.splitlines() if line[2:3].isdigit()]
    assert [row[1].strip("`") for row in rows] == spec.model_inputs()
    assert [row[2] for row in rows] == [i.dtype for i in spec.model_input_schema()]
    assert "**Missing:**" not in text
    assert f"{BEGIN}\n{NOT_MEASURED}\n{END}" in text


def test_a_spec_without_design_renders_and_names_what_is_missing(parameters: dict[str, Any]) -> None:
    mapping = _spec_mapping()
    del mapping["design"]
    spec = spec_from_mapping(mapping)
    text = render_design(spec, parameters)
    assert missing_design(spec) == [
        "objective",
        "scale",
        "constraints",
        "bottlenecks",
        "tradeoffs",
        "scaling",
    ]
    assert "the spec has no `design:` block" in text
    for field in missing_design(spec):
        assert f"_Not stated: add `design.{field}`" in text, field
    assert all(heading in text for heading in SECTIONS)
    assert "**Latency budget:** 150 ms" in text  # the rest of the spec still speaks

    mapping["design"] = {"objective": "Sell more.", "scale": {"peak_qps": 10}}
    partial = render_design(spec_from_mapping(mapping), parameters)
    assert "leaves part of `design:` empty" in partial
    assert "Sell more." in partial
    assert "`design.objective`" not in partial
    assert "_Not stated: add `design.scaling`" in partial


def test_missing_parameters_are_named_not_invented() -> None:
    text = render_design(load_spec(SPEC_FILE), {"training": {"holdout": "3d"}})
    assert "the last `3d` are the holdout" in text
    assert "_not set (`training.validation` in conf/base/parameters.yml)_" in text
    assert "_not set (`canary_analysis` in conf/base/parameters.yml)_" in text


_KIND = {
    "expect_table_row_count_to_be_between": "row_count",
    "expect_table_row_count_to_equal": "row_count",
    "expect_column_to_exist": "exists",
    DTYPE_CHECK: "dtype",
    "expect_column_values_to_not_be_null": "not_null",
    "expect_column_values_to_be_unique": "unique",
    "expect_column_values_to_be_between": "between",
    "expect_column_values_to_be_in_set": "in_set",
    REFERENCE_CHECK: "references",
}


def test_validation_counts_match_the_suites_validation_builds() -> None:
    spec = load_spec(SPEC_FILE)

    def kinds(checks: list[Any], extra: int) -> Counter[str]:
        counts = Counter(_KIND[c.type] for c in checks[: len(checks) - extra])
        return +Counter({**counts, "extra": extra})

    for table in spec.tables:
        extra = sum(e.table == table for e in spec.expectations)
        assert table_checks(spec, table) == kinds(table_suite(spec, table), extra), table
    extra = sum(e.table == "training_set" for e in spec.expectations)
    assert training_set_checks(spec) == kinds(training_set_suite(spec, 0), extra)


def test_measured_section_shows_model_baseline_oracle_and_gates(parameters: dict[str, Any]) -> None:
    spec = load_spec(SPEC_FILE)
    measured = {
        "evaluation": _evaluation(passed=False),
        "split": {"rows": {"train": 140000, "valid": 31352, "holdout": 28648}},
        "tuning": {"metric": "auc", "best_score": 0.7701, "trials": [{}, {}, {}, {}], "wall_s": 13.876},
        "registered_model": {"tag": "ad_click:abc", "stable": "ad_click:abc"},
        "serving_bench": {"results": {"ours_p50_ms": 1.772, "ours_p99_ms": 2.816, "ours_rps": 501.567}},
    }
    text = render_design(spec, parameters, measured)
    section = text[text.index(BEGIN) : text.index(END)]
    assert (
        _line(section, "| `auc` |")
        == "| `auc` | 0.7712 | 0.7523 | 0.7963 | 0.0251 | FAIL max_gap_to_oracle |"
    )
    assert "28,648 rows, 860 positives (base rate 3.00%)" in section
    assert "Training rows 140,000, validation rows 31,352." in section
    assert "1 of 1 gate checks FAILED" in section
    assert "- FAIL auc max_gap_to_oracle: auc gap detail" in section
    assert "| tune (Ray Tune) | 13.9 s | 4 trial(s); best auc 0.7701 |" in section
    assert "Registered `ad_click:abc`" in section
    assert "p50 1.772 ms, p99 2.816 ms" in section
    assert "150 ms budget" in section
    assert NOT_MEASURED not in text

    bench_only = render_design(spec, parameters, {"serving_bench": measured["serving_bench"]})
    assert "Model quality: not measured yet: run `make run`." in bench_only


def test_a_retrain_of_the_same_model_is_not_called_a_registration(parameters: dict[str, Any]) -> None:
    spec = load_spec(SPEC_FILE)
    again = {
        "tag": "ad_click:abc",
        "stable": "ad_click:abc",
        "registered": False,
        "duplicate_of": "ad_click:abc",
    }
    section = render_design(spec, parameters, {"registered_model": again})
    assert (
        "The run trained `ad_click:abc` again (identical: not registered twice); stable: `ad_click:abc`."
        in section
    )
    assert "Registered `ad_click:abc`" not in section


def test_a_report_without_a_field_it_needs_is_named() -> None:
    broken = _evaluation()
    del broken["oracle_gap"]
    with pytest.raises(ConfigError, match=r"measured report \(evaluation\) lacks .*'oracle_gap'.*kedro run"):
        render_design(load_spec(SPEC_FILE), {}, {"evaluation": broken})


def test_rendering_is_deterministic(parameters: dict[str, Any]) -> None:
    """Same inputs, same bytes: twice here, and in processes with other hash seeds."""
    spec = load_spec(SPEC_FILE)
    measured = {"evaluation": _evaluation()}
    text = render_design(spec, parameters, measured)
    assert render_design(spec, parameters, measured) == text
    script = (
        "import sys, json, yaml; from mlsd.design import render_design; from mlsd.spec import load_spec;"
        f"p = yaml.safe_load(open({str(ROOT / 'conf/base/parameters.yml')!r}));"
        f"sys.stdout.write(render_design(load_spec({str(SPEC_FILE)!r}), p, json.loads(sys.argv[1])))"
    )
    for seed in ("1", "2"):
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT / "src"), "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(measured)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout == text


def _mlsd(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `mlsd` command run in ``project``, importing this checkout's mlsd."""
    return subprocess.run(
        [sys.executable, "-m", "mlsd.commands", *args],
        cwd=project,
        env={**TELEMETRY_OFF, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_fails_on_a_missing_or_stale_doc_and_passes_on_a_fresh_one(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    doc = project / "docs" / "DESIGN.md"
    missing = _mlsd(project, "design", "--check")
    assert missing.returncode == 1
    assert str(doc) in missing.stderr
    assert "does not exist" in missing.stderr

    written = _mlsd(project, "design")
    assert written.returncode == 0, written.stderr
    assert doc.is_file()
    assert NOT_MEASURED in doc.read_text()
    assert _mlsd(project, "design", "--check").returncode == 0

    reports = project / "data" / "08_reporting"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "evaluation.json").write_text(json.dumps(_evaluation()))
    stale = _mlsd(project, "design", "--check")
    assert stale.returncode == 1
    assert str(doc) in stale.stderr
    assert "stale" in stale.stderr
    assert _mlsd(project, "design", "--project", str(project)).returncode == 0
    assert "| `auc` | 0.7712 |" in doc.read_text()
    assert check_design(project) is None


def test_the_repository_design_doc_is_fresh() -> None:
    """docs/DESIGN.md at the root is what the root's spec and reports render (else: `mlsd design`)."""
    assert check_design(ROOT) is None


def test_optional_json_dataset_is_none_until_the_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    dataset = OptionalJSONDataset(str(path))
    assert dataset.load() is None
    assert not dataset.exists()
    path.write_text('{"results": {"ours_p99_ms": 2.8}}')
    assert dataset.load() == {"results": {"ours_p99_ms": 2.8}}


@pytest.mark.slow
def test_kedro_run_writes_the_doc_with_the_measured_auc(built_project: Path) -> None:
    doc = built_project / "docs" / "DESIGN.md"
    evaluation = json.loads((built_project / "data" / "08_reporting" / "evaluation.json").read_text())
    registered = json.loads((built_project / "data" / "08_reporting" / "registered_model.json").read_text())
    text = doc.read_text()
    measured = text[text.index(BEGIN) : text.index(END)]
    values = evaluation["metrics"]
    row = _line(measured, "| `auc` |")
    expected = [f"{values[s]['auc']:.4f}" for s in ("model", "baseline", "oracle")]
    assert row.startswith("| `auc` | " + " | ".join(expected) + " |")
    assert f"{evaluation['holdout']['rows']:,} rows" in measured
    assert f"Registered `{registered['tag']}`" in measured
    assert check_design(built_project) is None  # the node and `mlsd design` render the same bytes
