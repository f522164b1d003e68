"""The train pipeline end to end: a registered ONNX model, and candidates the gates must stop.

Every test runs the real `kedro run` (Ray Tune, Ray Train, ONNX Runtime, BentoML's store) on the
small built project, and checks the registry before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from mlsd.export import onnx_feeds, onnx_scores, session
from mlsd.registry import MODEL_FILE, ModelRegistry
from mlsd.spec import ProblemSpec, load_spec, spec_from_mapping, spec_hash
from mlsd.training import TrainingParams, fingerprint, model_frame, time_split
from tests.conftest import SMALL_DATA_GATE, _write_small_data_gate, kedro_run, mlsd_cli

pytestmark = pytest.mark.slow


def _registry(project: Path) -> ModelRegistry:
    return ModelRegistry(project / "data" / "06_models" / "bentoml", "ad_click")


def _report(project: Path, name: str) -> dict:
    return json.loads((project / "data" / "08_reporting" / name).read_text())


def _run_spec(project: Path) -> ProblemSpec:
    """The spec as `kedro run` saw it: conf/base/problem.yml with conf/local's override merged."""
    spec = yaml.safe_load((project / "conf" / "base" / "problem.yml").read_text())["problem"]
    local = yaml.safe_load((project / "conf" / "local" / "problem.yml").read_text())["problem"]
    return spec_from_mapping({**spec, **local})


def _state(project: Path) -> tuple[list[str], str | None]:
    registry = _registry(project)
    return [v.tag for v in registry.versions()], registry.stable()


def test_default_run_registers_the_model_with_its_metadata(built_project: Path) -> None:
    spec = _run_spec(built_project)
    registered = _report(built_project, "registered_model.json")
    (version,) = _registry(built_project).versions()
    assert version.tag == registered["tag"] == registered["stable"]
    assert version.stable

    meta = version.metadata
    names = [i.name for i in spec.model_input_schema()]
    assert [i["name"] for i in meta["inputs"]] == names
    assert [i["name"] for i in meta["onnx"]["inputs"]] == names
    assert {i["dtype"] for i in meta["onnx"]["inputs"]} == {"float32", "string"}
    assert meta["spec_hash"] == spec_hash(spec)
    training_set = pd.read_parquet(built_project / "data" / "05_model_input" / "training_set.parquet")
    assert meta["training_data"]["fingerprint"] == fingerprint(training_set)
    assert set(meta["metrics"]) == {"model", "baseline", "oracle"}
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    assert meta["training"]["fit_wall_s"] > 0
    assert meta["code_version"]["mlsd"]

    # The registered graph is the served path: it scores the holdout like the native model.
    holdout = pd.read_parquet(built_project / "data" / "05_model_input" / "holdout.parquet")
    inputs = spec.model_input_schema()
    frame = model_frame(inputs, holdout)
    onnx_p = onnx_scores(session((version.path / MODEL_FILE).read_bytes()), onnx_feeds(inputs, frame))
    native = pd.read_pickle(built_project / "data" / "06_models" / "candidate_model.pkl")
    np.testing.assert_allclose(onnx_p, native.predict_proba(frame)[:, 1], atol=1e-5)


def test_evaluation_report_sets_model_baseline_and_oracle_side_by_side(built_project: Path) -> None:
    spec = load_spec(built_project / "conf" / "base" / "problem.yml")
    report = _report(built_project, "evaluation.json")
    metric_names = [m.name for m in spec.metrics]
    for scorer in ("model", "baseline", "oracle"):
        assert list(report["metrics"][scorer]) == metric_names
    assert report["passed"] is True
    # The oracle is the generator's truth: nothing trained beats it on AUC by more than noise.
    assert report["metrics"]["oracle"]["auc"] > report["metrics"]["baseline"]["auc"]
    markdown = (built_project / "data" / "08_reporting" / "evaluation.md").read_text()
    assert "| auc |" in markdown
    assert "evaluation_roc.png" in markdown
    for png in ("evaluation_roc.png", "evaluation_calibration.png"):
        assert (built_project / "data" / "08_reporting" / png).read_bytes().startswith(b"\x89PNG")


def test_training_ran_data_parallel_and_tune_tried_the_search_space(built_project: Path) -> None:
    training = _report(built_project, "training.json")
    assert [w["rank"] for w in training["workers"]] == [0, 1]
    assert sum(w["rows"] for w in training["workers"]) == training["rows"]
    tuning = _report(built_project, "tuning.json")
    params = yaml.safe_load((built_project / "conf" / "base" / "parameters.yml").read_text())
    assert len(tuning["trials"]) == params["training"]["tune"]["num_samples"]
    best = max(t["score"] for t in tuning["trials"])
    assert tuning["best_score"] == best
    assert training["params"] == tuning["best_params"]


def _swap_inputs(model: onnx.ModelProto, a: str, b: str) -> onnx.ModelProto:
    """The same graph with inputs ``a`` and ``b`` trading places: a feature-order mismatch."""
    rename = {a: b, b: a}
    for value in model.graph.input:
        value.name = rename.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
    return model


def test_parity_gate_stops_a_perturbed_graph_and_registers_nothing(project_copy: Path) -> None:
    before = _state(project_copy)
    candidate = project_copy / "data" / "06_models" / "candidate.onnx"
    perturbed = _swap_inputs(onnx.load(candidate), "age", "hour")
    candidate.write_bytes(perturbed.SerializeToString())

    result = kedro_run(project_copy, "--pipelines", "train", "--from-nodes", "check_parity")

    assert result.returncode != 0
    assert "GateError" in result.text
    assert "parity: max |onnx - native|" in result.text
    parity = _report(project_copy, "parity.json")
    assert parity["passed"] is False
    assert parity["max_abs_diff"] > 1e-3
    assert _state(project_copy) == before


def test_model_trained_on_shuffled_labels_fails_the_gates(project_copy: Path) -> None:
    # The small-data gates with the baseline gate (the shared fixture has a looser one): a model
    # trained on noise fails the oracle gap by ~4 standard errors (tests.conftest.SMALL_DATA_GATE).
    _write_small_data_gate(project_copy, SMALL_DATA_GATE)
    before = _state(project_copy)
    path = project_copy / "data" / "05_model_input" / "training_set.parquet"
    frame = pd.read_parquet(path)
    params = TrainingParams.model_validate(
        yaml.safe_load((project_copy / "conf" / "base" / "parameters.yml").read_text())["training"]
    )
    split = time_split(frame, "ts", params.holdout, params.validation)
    fit_rows = frame["ts"] < split.holdout_start  # only what the model learns from; holdout stays true
    rng = np.random.default_rng(0)
    frame.loc[fit_rows, "clicked"] = rng.permutation(frame.loc[fit_rows, "clicked"].to_numpy())
    frame.to_parquet(path)

    result = kedro_run(project_copy, "--pipelines", "train")

    assert result.returncode != 0
    assert "auc max_gap_to_oracle" in result.text
    assert "nothing was registered" in result.text
    evaluation = _report(project_copy, "evaluation.json")
    assert evaluation["passed"] is False
    assert evaluation["metrics"]["model"]["auc"] < 0.6
    assert _state(project_copy) == before


def test_retraining_the_same_model_adds_no_version_and_a_new_one_waits_until_promoted(
    project_copy: Path,
) -> None:
    (first,), stable = _state(project_copy)
    first_onnx = (_registry(project_copy).get(first).path / MODEL_FILE).read_bytes()
    timings_before = _report(project_copy, "run_timings.json")

    result = kedro_run(project_copy, "--pipelines", "train")
    assert result.returncode == 0, result.output[-3000:]

    # Seeded end to end (Tune's sampler, shards by rank, LightGBM): same data, same graph, so the
    # run reports the version that holds it instead of registering a copy.
    assert (project_copy / "data" / "06_models" / "candidate.onnx").read_bytes() == first_onnx
    assert _state(project_copy) == ([first], first)
    registered = _report(project_copy, "registered_model.json")
    assert registered["tag"] == registered["duplicate_of"] == first
    assert registered["registered"] is False
    assert f"identical to {first}" in result.text
    assert "KedroDeprecationWarning" not in result.text  # --pipelines, not the deprecated --pipeline
    # The train pipeline rewrote the design document, so the check passes right after it.
    check = mlsd_cli(project_copy, "design", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    # Its node timings went to their own file; the default run's are as they were.
    assert set(_report(project_copy, "run_timings_train.json")["node_seconds"]) >= {
        "fit_model",
        "write_design_doc",
    }
    assert _report(project_copy, "run_timings.json") == timings_before

    # A different model (here registered by hand) is a new version and waits as a candidate.
    second = _registry(project_copy).register(first_onnx, {"note": "v2"}, {})
    tags, stable_after = _state(project_copy)
    assert tags == [first, second]
    assert stable_after == stable == first  # registry.promote: first -> the new one is a candidate
    listing = mlsd_cli(project_copy, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert f"* {first}" in listing.stdout
    assert f"  {second}" in listing.stdout
    promoted = mlsd_cli(project_copy, "models", "promote", second)
    assert promoted.returncode == 0, promoted.stderr
    assert mlsd_cli(project_copy, "models", "stable").stdout.strip() == second
    unknown = mlsd_cli(project_copy, "models", "promote", "ad_click:nope")
    assert unknown.returncode == 2
    assert "registered versions" in unknown.stderr
    assert _registry(project_copy).stable() == second
