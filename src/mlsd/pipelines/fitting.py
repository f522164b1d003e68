"""The fit nodes every task shares: refit the model with Tune's best parameters, fit the baseline
on the same rows; and the reports of one Tune search and of one fit.

A task supplies one ``fit(spec, model_spec, params, training, ray, rows) -> (model, report)``;
:func:`fit_nodes` turns it into the two Kedro nodes, so "model on train + validation with the best
parameters, baseline on the same rows with its own" is written once for every task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from mlsd.spec import ModelSpec, ProblemSpec, spec_from_mapping
from mlsd.training import FitResult, SearchResult

Fit = Callable[
    [ProblemSpec, ModelSpec, dict[str, Any], Mapping[str, Any], Mapping[str, Any], pd.DataFrame],
    tuple[Any, dict[str, Any]],
]
"""``(spec, model spec, params, training params, ray params, rows) -> (fitted model, report)``."""

FitNode = Callable[..., tuple[Any, dict[str, Any]]]


def tuning_report(metric: str, result: SearchResult) -> dict[str, Any]:
    """What the pipeline records of one Tune search: the metric it optimized, the best parameters
    and score, every trial, and the wall time."""
    return {
        "metric": metric,
        "best_params": result.best_params,
        "best_score": result.best_score,
        "trials": result.trials,
        "wall_s": result.wall_s,
    }


def fit_report(
    model: ModelSpec, params: dict[str, Any], rows: pd.DataFrame, fit: FitResult, **details: Any
) -> dict[str, Any]:
    """What the pipeline records of one fit: family, parameters, rows, the task's ``details``, and
    where and how long Ray trained it."""
    return {
        "family": model.family,
        "params": params,
        "rows": len(rows),
        **details,
        "wall_s": fit.wall_s,
        "workers": fit.workers,
        "nodes": fit.nodes,
    }


def fit_nodes(fit: Fit) -> tuple[FitNode, FitNode]:
    """The ``fit_model`` and ``fit_baseline`` nodes of a task whose one fit function is ``fit``."""

    def fit_model(
        problem: Mapping[str, Any],
        training: Mapping[str, Any],
        ray: Mapping[str, Any],
        train: pd.DataFrame,
        valid: pd.DataFrame,
        tuning: Mapping[str, Any],
    ) -> tuple[Any, dict[str, Any]]:
        """Refit the spec's model with Tune's best parameters on train + validation, on Ray."""
        spec = spec_from_mapping(problem)
        return fit(spec, spec.model, dict(tuning["best_params"]), training, ray, pd.concat([train, valid]))

    def fit_baseline(
        problem: Mapping[str, Any],
        training: Mapping[str, Any],
        ray: Mapping[str, Any],
        train: pd.DataFrame,
        valid: pd.DataFrame,
    ) -> tuple[Any, dict[str, Any]]:
        """Fit the spec's baseline with its own parameters on the same rows; the model must beat it."""
        spec = spec_from_mapping(problem)
        return fit(spec, spec.baseline, spec.baseline.params, training, ray, pd.concat([train, valid]))

    return fit_model, fit_baseline
