"""The project's pipelines: ``generate`` (raw data), ``features`` (validated features), ``train``,
``design`` (docs/DESIGN.md with the measured numbers), ``monitoring`` (drift, online quality,
canary verdict, retraining trigger; not in the default) and ``batch_scoring`` (a table scored by
the stable model through Ray Data; not in the default)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from mlsd.pipelines import batch_scoring, data, design, features, monitoring, training


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "generate": data.generate_pipeline(),
        "features": data.inputs_pipeline() + features.create_pipeline(),
        "train": training.create_pipeline(),
        "monitoring": monitoring.create_pipeline(),
        "design": design.create_pipeline(),
        "batch_scoring": batch_scoring.create_pipeline(),
    }
    pipelines["__default__"] = (
        pipelines["generate"] + pipelines["features"] + pipelines["train"] + pipelines["design"]
    )
    return pipelines
