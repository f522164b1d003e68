"""The project's pipelines: ``generate`` (synthetic raw data) and ``features`` (everything after)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from mlsd.pipelines import data, features


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "generate": data.generate_pipeline(),
        "features": data.inputs_pipeline() + features.create_pipeline(),
    }
    pipelines["__default__"] = pipelines["generate"] + pipelines["features"]
    return pipelines
