"""The data half of `kedro run`, end to end on small data: outputs, planted faults, the oracle."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mlsd.features import FeatureStoreParams, open_store
from mlsd.spec import load_spec, spec_from_mapping
from tests.conftest import PROBLEMS, SMALL, _write_small_data_gate, copy_project, kedro_run

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_writes_every_output(built_project: Path) -> None:
    data = built_project / "data"
    for table in ("users", "ads", "impressions", "clicks"):
        assert len(pd.read_parquet(data / "01_raw" / f"{table}.parquet")) > 0, table
    for report in ("input_validation", "training_set_validation"):
        assert json.loads((data / "08_reporting" / f"{report}.json").read_text())["success"] is True
        assert "PASSED" in (data / "08_reporting" / f"{report}.html").read_text()
    registry = json.loads((data / "08_reporting" / "feature_registry.json").read_text())
    assert registry["feature_views"] == ["ad_ctr", "user_category_ctr", "user_ctr", "user_profile"]
    assert (data / "feast" / "registry.db").stat().st_size > 0
    assert (data / "feast" / "online_store.db").stat().st_size > 0
    training = pd.read_parquet(data / "05_model_input" / "training_set.parquet")
    events = pd.read_parquet(data / "02_intermediate" / "events.parquet")
    assert len(training) == len(events) == 20_000
    assert training["imp_id"].tolist() == events["imp_id"].tolist()
    spec = load_spec(built_project / "conf" / "base" / "problem.yml")
    assert training[spec.model_inputs()].notna().all().all()


def test_oracle_auc_from_the_stored_truth(built_project: Path) -> None:
    """The generator's true probability is the best any model can do, and it is never a feature."""
    spec = load_spec(built_project / "conf" / "base" / "problem.yml")
    training = pd.read_parquet(built_project / "data" / "05_model_input" / "training_set.parquet")
    y, truth = training[spec.label.column], training[spec.label.truth]
    oracle_auc = roc_auc_score(y, truth)
    assert 0.72 < oracle_auc < 0.9, oracle_auc
    # The truth beats every single model input used as a score, and a constant-CTR predictor.
    for name in spec.model_inputs():
        if pd.api.types.is_numeric_dtype(training[name]):
            assert oracle_auc > roc_auc_score(y, training[name]), name
    assert log_loss(y, truth) < log_loss(y, np.full(len(y), y.mean()))
    # ... and it is not among the training features, in the spec or in the Feast registry.
    assert spec.label.truth not in spec.model_inputs()
    store = open_store(FeatureStoreParams(repo_path=built_project / "feature_repo"))
    served = {f.name for view in store.list_feature_views() for f in view.features}
    assert served == set(spec.feature_fields())
    assert spec.label.truth not in served


def test_planted_bad_rows_stop_the_run_by_name(project_copy: Path) -> None:
    raw = project_copy / "data" / "01_raw"
    impressions = pd.read_parquet(raw / "impressions.parquet")
    impressions["user_id"] = impressions["user_id"].astype("Int64")
    impressions.loc[10, "user_id"] = pd.NA  # null in a key
    impressions.loc[11, "position"] = 42  # out of range
    impressions.loc[12, "imp_id"] = impressions.loc[13, "imp_id"]  # duplicate id
    impressions.to_parquet(raw / "impressions.parquet")
    ads = pd.read_parquet(raw / "ads.parquet")
    ads.loc[0, "category"] = "weapons"  # unknown category
    ads.to_parquet(raw / "ads.parquet")
    protected = [
        project_copy / "data" / "02_intermediate" / "events.parquet",
        project_copy / "data" / "05_model_input" / "training_set.parquet",
        project_copy / "data" / "feast" / "online_store.db",
    ]
    before = {p: _digest(p) for p in protected}

    result = kedro_run(project_copy, "--pipeline", "features")

    assert result.returncode != 0
    expected = [
        "impressions.user_id: expect_column_values_to_not_be_null",
        "impressions.position: expect_column_values_to_be_between",
        "impressions.imp_id: expect_column_values_to_be_unique",
        "ads.category: expect_column_values_to_be_in_set",
    ]
    for line in expected:
        assert line in result.text, line
    assert "DataValidationError" in result.text
    assert "'weapons'" in result.text
    assert "[42]" in result.text
    report = json.loads((project_copy / "data" / "08_reporting" / "input_validation.json").read_text())
    assert report["success"] is False
    assert all(any(line in failure for failure in report["failures"]) for line in expected)
    assert "FAILED" in (project_copy / "data" / "08_reporting" / "input_validation.html").read_text()
    assert {p: _digest(p) for p in protected} == before, "a failed validation overwrote a good output"


def test_invalid_spec_stops_kedro_before_any_node(project_copy: Path) -> None:
    spec_file = project_copy / "conf" / "base" / "problem.yml"
    text = spec_file.read_text()
    assert "position: {dtype: int64, min: 1, max: 10}" in text
    spec_file.write_text(
        text.replace(
            "position: {dtype: int64, min: 1, max: 10}", "position: {dtype: int64, min: 10, max: 1}", 1
        )
    )
    raw_before = _digest(project_copy / "data" / "01_raw" / "impressions.parquet")

    result = kedro_run(project_copy, "--pipeline", "generate")

    assert result.returncode != 0
    assert "SpecError" in result.text
    assert "tables.impressions.columns.position" in result.text
    assert "greater than max" in result.text
    assert _digest(project_copy / "data" / "01_raw" / "impressions.parquet") == raw_before


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256)."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_whose_model_fails_a_gate_leaves_the_online_store_and_the_registry_alone(
    project_copy: Path,
) -> None:
    """What the server reads (online store, registry) changes only once a model was registered:
    a run on new data whose model misses a gate has rewritten the features but loaded nothing."""
    _write_small_data_gate(project_copy, 0.0)  # no model matches the oracle: the gate must fail
    data = project_copy / "data"
    online = data / "feast" / "online_store.db"
    before = {"online": _digest(online), "registry": _tree_digest(data / "06_models" / "bentoml")}
    features_before = _digest(data / "04_feature" / "user_ctr.parquet")
    online_report = (data / "08_reporting" / "online_store.json").read_text()

    result = kedro_run(project_copy, "--params", f"{SMALL},generator.seed=8,training.tune.num_samples=1")

    assert result.returncode != 0
    assert "GateError" in result.text
    evaluation = json.loads((data / "08_reporting" / "evaluation.json").read_text())
    assert evaluation["passed"] is False
    assert _digest(data / "04_feature" / "user_ctr.parquet") != features_before  # new features...
    assert _digest(online) == before["online"]  # ...not served
    assert _tree_digest(data / "06_models" / "bentoml") == before["registry"]
    assert (data / "08_reporting" / "online_store.json").read_text() == online_report
    # The run printed no third-party deprecation noise (mlsd.hooks.THIRD_PARTY_WARNINGS).
    assert "DeprecationWarning" not in result.text
    assert "register_new_resolver" not in result.text


# The warnings a `kedro run` printed before they were silenced, as the libraries raise them.
KNOWN_NOISE = [
    (
        UserWarning,
        "register_new_resolver() is deprecated and will be removed",
        "kedro.config.omegaconf_config",
    ),
    (DeprecationWarning, "`use_push_based_shuffle` is deprecated! Configure", "ray.data.context"),
    (
        DeprecationWarning,
        "`use_polars` is deprecated, please configure `use_polars_sort`",
        "ray.data.context",
    ),
    (DeprecationWarning, "`use_arrow_tensor_v2` is deprecated. Configure", "ray.data.context"),
    (DeprecationWarning, "GitWildMatchPattern ('gitwildmatch') is deprecated. Use", "pathspec.pattern"),
    (UserWarning, "Discarding nonzero nanoseconds in conversion.", "feast.utils"),
]


def _shown(category: type[Warning], message: str, module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(
            message, category, f"{module.replace('.', '/')}.py", 1, module=module, registry={}
        )
    return bool(caught)


def test_known_third_party_warnings_are_silenced_and_nothing_else() -> None:
    from mlsd.hooks import THIRD_PARTY_WARNINGS, QuietWarningsHook, quiet_third_party_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert all(_shown(*noise) for noise in KNOWN_NOISE)
        quiet_third_party_warnings()
        assert [noise for noise in KNOWN_NOISE if _shown(*noise)] == []
        assert len(THIRD_PARTY_WARNINGS) == len(KNOWN_NOISE)
        # Only those: the same text from our code, or another warning of those modules, still shows.
        assert _shown(UserWarning, "register_new_resolver() is deprecated", "mlsd.project")
        assert _shown(DeprecationWarning, "`use_polars` is deprecated", "mlsd.training.runtime")
        assert _shown(DeprecationWarning, "`something_else` is deprecated", "ray.data.context")
        assert _shown(FutureWarning, "`use_polars` is deprecated", "ray.data.context")
        # Importing feast puts a catch-all DeprecationWarning filter in front; the hook undoes that.
        warnings.simplefilter("once", DeprecationWarning)  # what `import feast` does
        assert _shown(*KNOWN_NOISE[1])
        QuietWarningsHook().before_node_run()
        assert not _shown(*KNOWN_NOISE[1])


def test_the_pipelines_option_runs_without_kedro_deprecation_warnings(project_copy: Path) -> None:
    result = kedro_run(project_copy, "--pipelines", "design")
    assert result.returncode == 0, result.output[-3000:]
    assert "Warning" not in result.text, result.output[-3000:]
    # The design pipeline's timings went to their own file.
    timings = json.loads((project_copy / "data" / "08_reporting" / "run_timings_design.json").read_text())
    assert list(timings["node_seconds"]) == ["write_design_doc"]
    assert timings["pipelines"] == ["design"]


def test_no_command_in_the_docs_uses_the_deprecated_pipeline_option() -> None:
    """Kedro 1.x renamed `kedro run --pipeline` to `--pipelines` and warns on the old one."""
    root = Path(__file__).resolve().parent.parent
    texts = [*root.glob("*.md"), root / "Makefile", *(root / "docs").glob("*.md")]
    for folder in ("conf", "cookiecutter", "monitoring", "deployment"):
        texts += [
            p for p in (root / folder).rglob("*") if p.suffix in (".md", ".yml") or p.name == "Makefile"
        ]
    stale = [
        f"{p.relative_to(root)}:{n}"
        for p in texts
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"--pipeline\b", line)
    ]
    assert stale == [], "use `kedro run --pipelines NAME`: " + ", ".join(stale)


def test_a_run_can_set_every_oracle_gap_gate_and_the_approval_records_it() -> None:
    from mlsd.errors import GateError
    from mlsd.pipelines.training import approve, gated_problem

    root = Path(__file__).resolve().parent.parent
    problem = load_spec(root / "conf" / "base" / "problem.yml").model_dump(mode="json")
    assert gated_problem(problem, {"max_gap_to_oracle": None}) == problem
    relaxed = gated_problem(problem, {"max_gap_to_oracle": 0.2})
    gaps = [(m["gate"] or {}).get("max_gap_to_oracle") for m in relaxed["metrics"]]
    before = [(m["gate"] or {}).get("max_gap_to_oracle") for m in problem["metrics"]]
    assert gaps == [None if gap is None else 0.2 for gap in before]
    assert any(gap == 0.2 for gap in gaps)
    assert (
        relaxed["metrics"][0]["gate"]["must_beat_baseline"]
        == problem["metrics"][0]["gate"]["must_beat_baseline"]
    )
    with pytest.raises(ValueError, match="max_gap_to_oracle"):
        gated_problem(problem, {"max_gap_to_oracle": -1})
    with pytest.raises(ValueError, match="max_gap"):
        gated_problem(problem, {"max_gap": 0.2})  # a typo is named, not ignored
    gate = {"metric": "auc", "check": "max_gap_to_oracle", "passed": True, "detail": "auc gap 0.1 <= max 0.2"}
    passed, parity = {"gates": [gate]}, {"passed": True, "max_abs_diff": 0.0, "tolerance": 1e-5, "rows": 1}
    assert approve(passed, parity, {"max_gap_to_oracle": 0.2})["gate_overrides"] == {"max_gap_to_oracle": 0.2}
    assert "gate_overrides" not in approve(passed, parity, {"max_gap_to_oracle": None})
    with pytest.raises(GateError, match=r"gap 0\.3 > max 0\.2"):
        approve({"gates": [{**gate, "passed": False, "detail": "auc gap 0.3 > max 0.2"}]}, parity, {})


CATALOG = sorted(p.parent.name for p in PROBLEMS.glob("*/smoke.yml"))


@pytest.mark.parametrize("problem", CATALOG)
def test_the_smaller_data_example_is_the_run_the_tests_make(problem: str, tmp_path: Path) -> None:
    """Each README's "Smaller data" command is the smoke run tests/test_template.py makes (its
    parameters, its oracle-gap gates through `gates.max_gap_to_oracle`), so it passes its gates."""
    import yaml

    from mlsd.pipelines.training import gated_problem

    smoke = yaml.safe_load((PROBLEMS / problem / "smoke.yml").read_text())
    readme = " ".join((PROBLEMS / problem / "README.md").read_text().split())
    (params,) = re.findall(r'Smaller data[^`]*`\.venv/bin/kedro run --params "([^"]+)"`', readme)
    assert params == f"{smoke['params']},gates.max_gap_to_oracle={smoke['gate']}"
    # The run parameter sets the same gates as the tests' conf/local/problem.yml does.
    project = copy_project(tmp_path / "p", problem=problem, gate=smoke["gate"])
    local = yaml.safe_load((project / "conf" / "local" / "problem.yml").read_text())["problem"]["metrics"]
    spec = load_spec(PROBLEMS / problem / "problem.yml").model_dump(mode="json")
    relaxed = spec_from_mapping(gated_problem(spec, {"max_gap_to_oracle": smoke["gate"]}))
    assert relaxed.metrics == spec_from_mapping({**spec, "metrics": local}).metrics
