"""The project's pipelines: ``generate`` (raw data), ``features`` (validated features) and ``train``."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from mlsd.pipelines import data, features, training


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "generate": data.generate_pipeline(),
        "features": data.inputs_pipeline() + features.create_pipeline(),
        "train": training.create_pipeline(),
    }
    pipelines["__default__"] = pipelines["generate"] + pipelines["features"] + pipelines["train"]
    return pipelines
