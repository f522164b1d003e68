"""``kedro run --pipelines batch_scoring``: a table scored by the stable model through Ray Data.

The table is ``batch_scoring.input`` (a parquet file or folder Ray Data reads in parallel) or,
when that is null, the training set. Ray is the one in conf (``ray:``): local and bounded, or a
cluster at ``ray.address`` / RAY_ADDRESS. The output keeps the routing key and adds the score; a
task may add a step after scoring (an uplift campaign allocates its budget: see
mlsd.pipelines.uplift's ``score_batch``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from mlsd.errors import ConfigError
from mlsd.pipelines import as_dict, by_task
from mlsd.registry import MODEL_FILE, ModelRegistry, RegistryParams
from mlsd.scoring import BatchScoringParams, score_dataset
from mlsd.serving.rollout import served_outputs
from mlsd.spec import ProblemSpec, spec_from_mapping
from mlsd.training import RayParams
from mlsd.training.runtime import cluster_address, ensure_ray


def score_table(
    spec: ProblemSpec,
    registry: Mapping[str, Any],
    ray: Mapping[str, Any],
    batch_scoring: Mapping[str, Any],
    training_set: pd.DataFrame,
    keep: list[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The configured table scored by the stable model, and a report (rows, rows/s, tag, Ray);
    the output keeps the routing key and the ``keep`` columns.

    Raises:
        ConfigError: nothing is stable yet, or the configured input does not exist.
    """
    params = BatchScoringParams.model_validate(as_dict(batch_scoring))
    ray_params = RayParams.model_validate(as_dict(ray))
    store = ModelRegistry(RegistryParams.model_validate(as_dict(registry)).home, spec.name)
    tag = store.stable()
    if tag is None:
        raise ConfigError("batch_scoring: no stable model in the registry yet; run `kedro run` first")
    table: pd.DataFrame | Path = training_set
    if params.input is not None:
        table = Path(params.input)
        if not table.exists():
            raise ConfigError(f"batch_scoring.input: {table} does not exist (a parquet file or folder)")
    graph = (store.get(tag).path / MODEL_FILE).read_bytes()
    keep = list(dict.fromkeys([spec.serving.routing_key, *(keep or [])]))
    start = time.perf_counter()
    ensure_ray(ray_params)  # timed on its own: a cluster is already up, a local Ray starts here
    ray_start = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_dataset(
        graph, spec.model_input_schema(), served_outputs(spec)[0], table, keep, params, ray_params
    )
    wall = time.perf_counter() - start
    report = {
        "tag": tag,
        "input": str(params.input or "training_set"),
        "rows": len(scores),
        "ray_start_s": round(ray_start, 3),
        "wall_s": round(wall, 3),
        "rows_per_s": round(len(scores) / wall) if wall > 0 else None,
        "ray_address": cluster_address(ray_params) or "local",
        "concurrency": params.concurrency,
        "batch_size": params.batch_size,
    }
    return scores, report


@by_task
def score_batch(
    problem: Mapping[str, Any],
    registry: Mapping[str, Any],
    ray: Mapping[str, Any],
    batch_scoring: Mapping[str, Any],
    training_set: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score the configured table with the stable model (Ray Data ``map_batches``)."""
    return score_table(spec_from_mapping(problem), registry, ray, batch_scoring, training_set)


def create_pipeline() -> Pipeline:
    return pipeline(
        [
            node(
                score_batch,
                ["params:problem", "params:registry", "params:ray", "params:batch_scoring", "training_set"],
                ["batch_scores", "batch_scoring_report"],
                name="score_batch",
            )
        ]
    )
