"""Hyperparameter search with Ray Tune: trials of the spec's search space run in parallel.

Each trial fits the family on the training part and scores the spec's primary metric on the
validation part (the span just before the holdout). The search is seeded, so it repeats.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import SpecError, TrainingError
from mlsd.spec import ModelInput
from mlsd.training.families import get_family
from mlsd.training.multilabel import multilabel, scores_of
from mlsd.training.params import RayParams, TuneParams
from mlsd.training.runtime import ensure_ray, results_dir

Scorer = Callable[[np.ndarray, np.ndarray], float]
_SAMPLERS = {"loguniform": 2, "uniform": 2, "randint": 2, "quniform": 3, "choice": 1}


@dataclass(frozen=True)
class SearchResult:
    """The best parameters (merged over the spec's fixed ones) and every trial's score."""

    best_params: dict[str, Any]
    best_score: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0


def tune_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's search space (``{param: {sampler: args}}``) as Ray Tune domains.

    Raises:
        SpecError: an entry is not one ``{loguniform|uniform|randint|quniform|choice: [...]}``.
    """
    from ray import tune

    domains = {}
    for name, entry in space.items():
        if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in _SAMPLERS:
            raise SpecError(
                f"model.search_space.{name}: {entry!r} must be one of {{{', '.join(_SAMPLERS)}: [...]}}"
            )
        sampler, args = next(iter(entry.items()))
        if not isinstance(args, list) or (sampler != "choice" and len(args) != _SAMPLERS[sampler]):
            raise SpecError(f"model.search_space.{name}.{sampler}: {args!r} has the wrong arguments")
        domains[name] = tune.choice(args) if sampler == "choice" else getattr(tune, sampler)(*args)
    return domains


def _trial(
    config: dict[str, Any],
    *,
    family: str,
    inputs: list[dict[str, Any]],
    params: dict[str, Any],
    seed: int,
    scorer: Scorer,
    data: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
) -> None:
    from ray import tune

    x_train, y_train, x_valid, y_valid = data
    model = multilabel(
        get_family(family).build(
            [ModelInput.model_validate(i) for i in inputs], {**params, **config}, seed, 1
        ),
        y_train,
    )
    start = time.perf_counter()
    model.fit(x_train, y_train)
    score = scorer(y_valid, scores_of(model, x_valid))
    tune.report({"score": float(score), "fit_s": time.perf_counter() - start})


def search(
    family: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    space: Mapping[str, Any],
    data: tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray],
    scorer: Scorer,
    *,
    higher_is_better: bool,
    seed: int,
    tune_params: TuneParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> SearchResult:
    """Try ``tune_params.num_samples`` configurations of ``space``; return the best by ``scorer``.

    With an empty space there is nothing to search: the fixed ``params`` come back unscored.

    Raises:
        TrainingError: every trial failed.
    """
    trial_args = {"family": family, "inputs": [i.model_dump() for i in inputs], "seed": seed, "data": data}
    return run_trials(
        _trial,
        {**trial_args, "params": params, "scorer": scorer},
        params,
        space,
        higher_is_better=higher_is_better,
        seed=seed,
        tune_params=tune_params,
        ray_params=ray_params,
        root=root,
    )


def run_trials(
    trial: Callable[..., None],
    trial_args: Mapping[str, Any],
    params: dict[str, Any],
    space: Mapping[str, Any],
    *,
    higher_is_better: bool,
    seed: int,
    tune_params: TuneParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> SearchResult:
    """Run ``trial(config, **trial_args)`` (a Tune function that reports ``score``) over
    ``space``; the best trial's config merged over ``params``. With an empty space there is
    nothing to search: the fixed ``params`` come back unscored.

    Raises:
        TrainingError: every trial failed.
    """
    if not space:
        return SearchResult(best_params=dict(params), best_score=float("nan"))
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ensure_ray(ray_params, root)  # with_parameters puts trial_args (the data) in Ray's object store
    trainable = tune.with_parameters(trial, **trial_args)
    storage = results_dir(ray_params, root)
    name = f"tune-{uuid.uuid4().hex[:8]}"
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=tune_space(space),
        tune_config=tune.TuneConfig(
            num_samples=tune_params.num_samples,
            search_alg=BasicVariantGenerator(max_concurrent=tune_params.max_concurrent, random_state=seed),
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
    )
    start = time.perf_counter()
    try:
        grid = tuner.fit()
    finally:
        shutil.rmtree(storage / name, ignore_errors=True)
    trials: list[dict[str, Any]] = [
        {
            "config": r.config,
            "score": (r.metrics or {}).get("score"),
            "error": str(r.error) if r.error else None,
        }
        for r in (grid[i] for i in range(len(grid)))
    ]
    scored = [t for t in trials if t["score"] is not None]
    if not scored:
        raise TrainingError(f"all {len(trials)} Tune trials failed; first error: {trials[0]['error']}")
    best = (max if higher_is_better else min)(scored, key=lambda t: t["score"])
    return SearchResult(
        best_params={**params, **best["config"]},
        best_score=float(best["score"]),
        trials=trials,
        wall_s=round(time.perf_counter() - start, 3),
    )
