"""Fit and tune recommenders through Ray: one fit is a Ray task, the search is Ray Tune trials.

ALS is one in-memory solve per half-step, so a fit runs on one worker; Ray earns its place in the
search, where trials of the spec's space run in parallel (and on a cluster with RAY_ADDRESS). A
trial fits on the training span and scores the spec's primary metric on the validation span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlsd.errors import TrainingError
from mlsd.training.factors import FactorModel, Interactions, build_recommender
from mlsd.training.params import RayParams, TuneParams
from mlsd.training.ray_fit import FitResult
from mlsd.training.runtime import ensure_ray
from mlsd.training.search import SearchResult, run_trials

ModelScorer = Callable[[FactorModel], float]


def _fit(
    family: str, params: dict[str, Any], data: Interactions, seed: int
) -> tuple[FactorModel, dict[str, Any]]:
    import ray

    start = time.perf_counter()
    model = build_recommender(family, params, seed).fit(data)
    report = {
        "rank": 0,
        "node_id": ray.get_runtime_context().get_node_id(),
        "rows": int(data.matrix.nnz),
        "fit_s": round(time.perf_counter() - start, 3),
    }
    return model, report


def fit_recommender_on_ray(
    family: str,
    params: dict[str, Any],
    data: Interactions,
    *,
    seed: int,
    ray_params: RayParams,
    root: Path | None = None,
) -> FitResult:
    """Fit ``family`` on ``data`` as one Ray task (on whichever node has a free CPU).

    Raises:
        TrainingError: the task failed.
    """
    import ray

    ensure_ray(ray_params, root)
    build_recommender(family, params, seed)  # a bad family or parameter fails here, by name
    start = time.perf_counter()
    try:
        model, report = ray.get(ray.remote(num_cpus=1)(_fit).remote(family, params, data, seed))
    except Exception as exc:  # Ray wraps the task's error in its own types; keep the cause's text
        raise TrainingError(f"Ray fit of recommender {family!r} failed: {exc}") from exc
    return FitResult(model=model, workers=[report], wall_s=round(time.perf_counter() - start, 3))


def _trial(
    config: dict[str, Any],
    *,
    family: str,
    params: dict[str, Any],
    seed: int,
    data: Interactions,
    scorer: ModelScorer,
) -> None:
    from ray import tune

    start = time.perf_counter()
    model = build_recommender(family, {**params, **config}, seed).fit(data)
    tune.report({"score": float(scorer(model)), "fit_s": time.perf_counter() - start})


def search_recommender(
    family: str,
    params: dict[str, Any],
    space: Mapping[str, Any],
    data: Interactions,
    scorer: ModelScorer,
    *,
    higher_is_better: bool,
    seed: int,
    tune_params: TuneParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> SearchResult:
    """Try ``tune_params.num_samples`` configurations of ``space``; the best by ``scorer(model)``.

    With an empty space the fixed ``params`` come back unscored.

    Raises:
        TrainingError: every trial failed.
    """
    if not space:
        return SearchResult(best_params=dict(params), best_score=float("nan"))
    from ray import tune

    ensure_ray(ray_params, root)  # with_parameters puts the data in Ray's object store
    trainable = tune.with_parameters(
        _trial, family=family, params=params, seed=seed, data=data, scorer=scorer
    )
    return run_trials(
        trainable,
        params,
        space,
        higher_is_better=higher_is_better,
        seed=seed,
        tune_params=tune_params,
        ray_params=ray_params,
        root=root,
    )
