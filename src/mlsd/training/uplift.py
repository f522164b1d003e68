"""Uplift models: the T-learner (two outcome models, one per arm of a randomized experiment),
fitted as one Ray task and tuned with Ray Tune on the spec's primary uplift metric.

``tau(x) = P(y | treated, x) - P(y | control, x)``, each probability from a pipeline of the spec's
model family fitted on that arm's rows alone. Both arms share the hyper-parameters, so a trial
is one configuration; it fits on the training span and scores the uplift metric (e.g. the Qini
area) of its tau on the validation span, the metric a campaign cares about, not either arm's
log loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import TrainingError
from mlsd.spec import ModelInput
from mlsd.training.families import get_family
from mlsd.training.params import RayParams, TuneParams
from mlsd.training.ray_fit import FitResult
from mlsd.training.runtime import ensure_ray
from mlsd.training.search import SearchResult, run_trials

UpliftScorer = Callable[["TLearner"], float]
ARMS = ("control", "treated")


class TLearner:
    """Two pipelines of one model family: one learns conversion without treatment, one with it.

    Shaped like a scikit-learn estimator (``__init__`` stores its arguments, ``fit`` returns
    self, learned state ends in ``_``) without importing scikit-learn when mlsd.training loads.

    Args:
        family: a model family name (``lightgbm``, ``sklearn_logistic``, ``module:function``).
        inputs: the model inputs (the treatment itself is not one).
        params: the family's hyper-parameters, shared by both arms.
        seed: the fit's seed.
        threads: threads per arm's fit.
    """

    def __init__(
        self,
        family: str = "lightgbm",
        inputs: list[ModelInput] | None = None,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        self.family, self.inputs, self.params = family, inputs, params
        self.seed, self.threads = seed, threads

    def fit(self, x: pd.DataFrame, y: np.ndarray, treated: np.ndarray) -> TLearner:
        """Fit the control pipeline on rows with ``treated == 0`` and the treated one on the rest.

        Raises:
            TrainingError: an arm has no rows, or only one outcome (nothing to learn).
        """
        y, treated = np.asarray(y), np.asarray(treated)
        build = get_family(self.family).build
        models = {}
        for arm, mask in zip(ARMS, (treated == 0, treated == 1), strict=True):
            if len(np.unique(y[mask])) < 2:
                raise TrainingError(
                    f"the {arm} arm has {int(mask.sum())} rows with outcomes {sorted(np.unique(y[mask]))}; "
                    "a T-learner needs both outcomes in both arms (more data, or a longer window)"
                )
            model = build(list(self.inputs or []), dict(self.params or {}), self.seed, self.threads)
            models[arm] = model.fit(x[mask], y[mask])
        self.control_, self.treated_ = models["control"], models["treated"]
        return self

    def arm_probabilities(self, x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """P(y = 1) under control and under treatment, per row.

        Raises:
            TrainingError: the learner was not fitted.
        """
        if not hasattr(self, "treated_"):
            raise TrainingError("this TLearner is not fitted yet; call fit(x, y, treated) first")
        return self.control_.predict_proba(x)[:, 1], self.treated_.predict_proba(x)[:, 1]

    def predict_score(self, x: pd.DataFrame) -> np.ndarray:
        """The estimated effect tau(x) per row, in [-1, 1]."""
        control, treated = self.arm_probabilities(x)
        return np.asarray(treated - control)


def _fit(
    family: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray],
    seed: int,
) -> tuple[TLearner, dict[str, Any]]:
    import ray

    start = time.perf_counter()
    model = TLearner(family, inputs, params, seed).fit(*data)
    report = {
        "rank": 0,
        "node_id": ray.get_runtime_context().get_node_id(),
        "rows": len(data[0]),
        "fit_s": round(time.perf_counter() - start, 3),
    }
    return model, report


def fit_uplift_on_ray(
    family: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray],
    *,
    seed: int,
    ray_params: RayParams,
    root: Path | None = None,
) -> FitResult:
    """Fit a T-learner of ``family`` on ``data`` (frame, outcome, treated) as one Ray task.

    Raises:
        TrainingError: the task failed (the cause's text kept).
    """
    import ray

    ensure_ray(ray_params, root)
    get_family(family)  # a bad family name fails here, by name
    start = time.perf_counter()
    try:
        model, report = ray.get(ray.remote(num_cpus=1)(_fit).remote(family, inputs, params, data, seed))
    except Exception as exc:  # Ray wraps the task's error in its own types; keep the cause's text
        raise TrainingError(f"Ray fit of the {family!r} T-learner failed: {exc}") from exc
    return FitResult(model=model, workers=[report], wall_s=round(time.perf_counter() - start, 3))


def _trial(
    config: dict[str, Any],
    *,
    family: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    seed: int,
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray],
    scorer: UpliftScorer,
) -> None:
    from ray import tune

    start = time.perf_counter()
    model = TLearner(family, inputs, {**params, **config}, seed).fit(*data)
    tune.report({"score": float(scorer(model)), "fit_s": time.perf_counter() - start})


def search_uplift(
    family: str,
    inputs: list[ModelInput],
    params: dict[str, Any],
    space: Mapping[str, Any],
    data: tuple[pd.DataFrame, np.ndarray, np.ndarray],
    scorer: UpliftScorer,
    *,
    higher_is_better: bool,
    seed: int,
    tune_params: TuneParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> SearchResult:
    """Try ``tune_params.num_samples`` configurations of ``space``: each a T-learner fitted on
    ``data`` and scored by ``scorer(model)`` (the validation span's uplift metric).

    With an empty space the fixed ``params`` come back unscored.

    Raises:
        TrainingError: every trial failed.
    """
    return run_trials(
        _trial,
        {"family": family, "inputs": inputs, "params": params, "seed": seed, "data": data, "scorer": scorer},
        params,
        space,
        higher_is_better=higher_is_better,
        seed=seed,
        tune_params=tune_params,
        ray_params=ray_params,
        root=root,
    )
