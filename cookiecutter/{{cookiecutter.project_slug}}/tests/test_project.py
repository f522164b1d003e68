"""Checks of this project's own configuration: spec, parameters, pipelines, API and generator.

They take seconds and start nothing; `make run` exercises the whole pipeline on the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlsd.problems import load_problem
from mlsd.project import load_parameters
from mlsd.spec import ProblemSpec, load_spec, spec_from_mapping

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parameters() -> dict[str, Any]:
    return load_parameters(PROJECT)


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return load_spec(PROJECT / "conf" / "base" / "problem.yml")


def test_kedro_reads_the_same_valid_spec(parameters: dict[str, Any], spec: ProblemSpec) -> None:
    merged = spec_from_mapping(parameters["problem"])  # conf/local may override parts, e.g. gates
    assert merged.name == spec.name
    assert merged.model_input_schema() == spec.model_input_schema()
    assert {"generator", "features", "training", "serving", "monitoring"} <= set(parameters)


def test_every_pipeline_is_registered() -> None:
    from mlsd.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    assert {"__default__", "generate", "features", "train", "monitoring", "batch_scoring"} <= set(pipelines)
    assert "register_model" in {n.name for n in pipelines["__default__"].nodes}


def test_simulated_requests_are_valid_api_requests(parameters: dict[str, Any], spec: ProblemSpec) -> None:
    from mlsd.serving.schema import api_models

    requests, truth = load_problem(spec).simulate(spec, parameters["generator"], 20, "none", 0)
    models = api_models(spec, max_batch=parameters["serving"]["max_batch"])
    assert len(requests) == len(truth) == 20
    for request in requests:
        models.request.model_validate(request)  # raises, naming the field, on a bad one
    bad = {**requests[0], spec.serving.entity_keys[0]: None}
    with pytest.raises(ValueError, match=spec.serving.entity_keys[0]):
        models.request.model_validate(bad)
