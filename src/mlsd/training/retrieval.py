"""Fit and tune retrieval models through Ray: one fit is a Ray task, the search is Ray Tune trials.

Any model built by a factory (``params -> model`` with ``fit(*data)``) goes this way: factor
recommenders (``fit(interactions)``) and text retrievers (``fit(documents, judgments)``).

ALS is one in-memory solve per half-step, so a fit runs on one worker; Ray earns its place in the
search, where trials of the spec's space run in parallel (and on a cluster with RAY_ADDRESS). A
trial fits on the training span and scores the spec's primary metric on the validation span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from mlsd.errors import TrainingError
from mlsd.training.factors import Interactions, build_recommender
from mlsd.training.params import RayParams, TuneParams
from mlsd.training.ray_fit import FitResult
from mlsd.training.runtime import ensure_ray
from mlsd.training.search import SearchResult, run_trials

ModelScorer = Callable[[Any], float]
Factory = Callable[[dict[str, Any]], Any]
"""``params -> unfitted model``; the model's ``fit(*data)`` learns it (picklable: Ray ships it)."""


def _fit(factory: Factory, params: dict[str, Any], data: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    import ray

    start = time.perf_counter()
    model = factory(params).fit(*data)
    report = {
        "rank": 0,
        "node_id": ray.get_runtime_context().get_node_id(),
        "fit_s": round(time.perf_counter() - start, 3),
    }
    return model, report


def fit_ranker_on_ray(
    factory: Factory,
    params: dict[str, Any],
    data: tuple[Any, ...],
    *,
    ray_params: RayParams,
    root: Path | None = None,
) -> FitResult:
    """Fit ``factory(params)`` on ``data`` as one Ray task (on whichever node has a free CPU).

    Raises:
        TrainingError: the task failed.
    """
    import ray

    ensure_ray(ray_params, root)
    name = type(factory(params)).__name__  # a bad family or parameter fails here, by name
    start = time.perf_counter()
    try:
        model, report = ray.get(ray.remote(num_cpus=1)(_fit).remote(factory, params, data))
    except Exception as exc:  # Ray wraps the task's error in its own types; keep the cause's text
        raise TrainingError(f"Ray fit of {name} failed: {exc}") from exc
    return FitResult(model=model, workers=[report], wall_s=round(time.perf_counter() - start, 3))


def fit_recommender_on_ray(
    family: str,
    params: dict[str, Any],
    data: Interactions,
    *,
    seed: int,
    ray_params: RayParams,
    root: Path | None = None,
) -> FitResult:
    """Fit recommender ``family`` on ``data`` as one Ray task (see :func:`fit_ranker_on_ray`)."""
    result = fit_ranker_on_ray(
        partial(build_recommender, family, seed=seed), params, (data,), ray_params=ray_params, root=root
    )
    result.workers[0]["rows"] = int(data.matrix.nnz)
    return result


def _trial(
    config: dict[str, Any],
    *,
    factory: Factory,
    params: dict[str, Any],
    data: tuple[Any, ...],
    scorer: ModelScorer,
) -> None:
    from ray import tune

    start = time.perf_counter()
    model = factory({**params, **config}).fit(*data)
    tune.report({"score": float(scorer(model)), "fit_s": time.perf_counter() - start})


def search_ranker(
    factory: Factory,
    params: dict[str, Any],
    space: Mapping[str, Any],
    data: tuple[Any, ...],
    scorer: ModelScorer,
    *,
    higher_is_better: bool,
    seed: int,
    tune_params: TuneParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> SearchResult:
    """Try ``tune_params.num_samples`` configurations of ``space``; the best by ``scorer(model)``
    of ``factory({**params, **config}).fit(*data)``. With an empty space the fixed ``params``
    come back unscored.

    Raises:
        TrainingError: every trial failed.
    """
    return run_trials(
        _trial,
        {"factory": factory, "params": params, "data": data, "scorer": scorer},
        params,
        space,
        higher_is_better=higher_is_better,
        seed=seed,
        tune_params=tune_params,
        ray_params=ray_params,
        root=root,
    )


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
    """Tune recommender ``family`` on ``data`` (see :func:`search_ranker`)."""
    return search_ranker(
        partial(build_recommender, family, seed=seed),
        params,
        space,
        (data,),
        scorer,
        higher_is_better=higher_is_better,
        seed=seed,
        tune_params=tune_params,
        ray_params=ray_params,
        root=root,
    )
