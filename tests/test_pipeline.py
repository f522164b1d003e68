"""The data half of `kedro run`, end to end on small data: outputs, planted faults, the oracle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mlsd.features import FeatureStoreParams, open_store
from mlsd.spec import load_spec
from tests.conftest import kedro_run

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
