"""The project's pipelines: ``generate`` (raw data), ``features`` (validated features and the online
store), ``train`` (a registered model, then docs/DESIGN.md with its numbers), ``design``
(docs/DESIGN.md alone), ``monitoring`` (drift, online quality, canary verdict, retraining
trigger; not in the default) and ``batch_scoring`` (a table scored by the stable model through
Ray Data; not in the default).

The default (``kedro run``) runs generate, features, train and design in one graph, with the
online store loaded last: only once a model trained on the new features was registered, so a
run whose model fails a gate leaves what the server reads (online store, registry) as it was.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from mlsd.pipelines import batch_scoring, data, design, features, monitoring, training


def register_pipelines() -> dict[str, Pipeline]:
    inputs = data.inputs_pipeline()
    pipelines = {
        "generate": data.generate_pipeline(),
        "features": inputs + features.create_pipeline(),
        "train": training.create_pipeline() + design.create_pipeline(),
        "monitoring": monitoring.create_pipeline(),
        "design": design.create_pipeline(),
        "batch_scoring": batch_scoring.create_pipeline(),
    }
    pipelines["__default__"] = (
        pipelines["generate"]
        + inputs
        + features.create_pipeline(materialize=False)
        + pipelines["train"]
        + features.online_pipeline(after="registered_model")
    )
    return pipelines
