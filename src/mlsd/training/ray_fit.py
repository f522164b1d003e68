"""One fit of a model family through Ray Train, data-parallel where the family supports it.

Each worker trains on a deterministic shard (every n-th row by rank), so a seeded fit repeats
exactly. Results are reported once, at the end: per-round reports wait for Ray's poll each time.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import TrainingError
from mlsd.spec import ModelInput
from mlsd.training.families import Family, get_family, load_object
from mlsd.training.multilabel import OneModelPerLabel
from mlsd.training.params import RayParams
from mlsd.training.runtime import ensure_ray, results_dir


@dataclass(frozen=True)
class FitResult:
    """A fitted pipeline and where it was trained.

    Attributes:
        model: the fitted scikit-learn pipeline (rank 0's copy; all ranks hold the same model).
        workers: one ``{"rank", "node_id", "rows", "fit_s"}`` per Ray Train worker.
        wall_s: seconds from submitting the Ray Train run to having the model back.
    """

    model: Any
    workers: list[dict[str, Any]]
    wall_s: float

    @property
    def nodes(self) -> list[str]:
        """The distinct Ray nodes the workers ran on."""
        return sorted({w["node_id"] for w in self.workers})


def _train_worker(config: dict[str, Any]) -> Any:
    """Ray Train's per-worker loop: fit the family on this rank's shard; rank 0 returns the model."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    frame, target = ray.get(config["data"])
    family = get_family(config["family"])
    inputs = [ModelInput.model_validate(i) for i in config["inputs"]]
    model = family.build(inputs, config["params"], config["seed"], config["threads"])
    if target.ndim == 2:  # multi-label: one model per class, on one worker (see fit_on_ray)
        model = OneModelPerLabel(model)
    elif world > 1 and family.distribute is not None:
        from ray.train.lightgbm import get_network_params

        model = family.distribute(model, get_network_params())
    start = time.perf_counter()
    model.fit(frame.iloc[rank::world], target[rank::world])
    config["log"].put(
        {
            "rank": rank,
            "node_id": ray.get_runtime_context().get_node_id(),
            "rows": len(frame.iloc[rank::world]),
            "fit_s": round(time.perf_counter() - start, 3),
        }
    )
    return model if rank == 0 else None


def fit_workers(family: Family, inputs: list[ModelInput], num_workers: int) -> int:
    """How many Ray Train workers fit ``family``: ``num_workers`` if it trains data-parallel, else 1.

    A model with text inputs fits on one worker: a TF-IDF vocabulary fitted on each worker's
    shard would differ between workers (one column index, different terms).
    """
    parallel = family.ray_trainer is not None and not any(i.text is not None for i in inputs)
    return num_workers if parallel else 1


def fit_on_ray(
    family_name: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    frame: pd.DataFrame,
    target: np.ndarray,
    *,
    seed: int,
    num_workers: int,
    threads_per_worker: int,
    ray_params: RayParams,
    root: Path | None = None,
) -> FitResult:
    """Fit ``family_name`` on ``frame``/``target`` with Ray Train.

    Families without a data-parallel trainer, models with text inputs and multi-label targets
    (``[N, classes]``: one model per class, :class:`OneModelPerLabel`) fit on one worker whatever
    ``num_workers`` says.

    Raises:
        TrainingError: a worker failed, or no model came back.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.util.queue import Queue

    ensure_ray(ray_params, root)
    family = get_family(family_name)
    trainer_cls = load_object(family.ray_trainer) if family.ray_trainer else DataParallelTrainer
    workers = fit_workers(family, inputs, num_workers) if target.ndim == 1 else 1
    log = Queue()
    storage = results_dir(ray_params, root)
    name = f"fit-{family_name.replace(':', '-')}-{uuid.uuid4().hex[:8]}"
    trainer = trainer_cls(
        _train_worker,
        train_loop_config={
            "data": ray.put((frame, target)),
            "family": family_name,
            "inputs": [i.model_dump() for i in inputs],
            "params": params,
            "seed": seed,
            "threads": threads_per_worker,
            "log": log,
        },
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads_per_worker}),
        run_config=RunConfig(storage_path=str(storage), name=name),
    )
    start = time.perf_counter()
    try:
        result: Any = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in its own types; keep the cause's text
        raise TrainingError(f"Ray Train fit of {family_name!r} failed: {exc}") from exc
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
    wall = time.perf_counter() - start
    if result.return_value is None:
        raise TrainingError(f"Ray Train fit of {family_name!r} returned no model from rank 0")
    reports = sorted((log.get() for _ in range(log.qsize())), key=lambda w: w["rank"])
    log.shutdown()
    return FitResult(model=result.return_value, workers=reports, wall_s=round(wall, 3))
