"""Validated training set in, registered ONNX model out.

split -> tune (Ray Tune) -> fit model and baseline (Ray Train) -> evaluate against baseline and
oracle -> export ONNX -> parity -> approve -> register (:mod:`mlsd.pipelines.registration`).
Reports are saved before ``approve`` decides, so a rejected candidate leaves its reasons on disk
and nothing in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline
from pydantic import BaseModel, ConfigDict, Field

from mlsd.errors import GateError
from mlsd.evaluation import check_metric_names, evaluation_report, failures, plot_curves, render_markdown
from mlsd.evaluation.gates import GateResult
from mlsd.evaluation.metrics import METRICS
from mlsd.export import parity_failure, parity_report, to_onnx
from mlsd.pipelines import as_dict, by_task
from mlsd.pipelines.fitting import fit_nodes, fit_report, tuning_report
from mlsd.pipelines.registration import register_model
from mlsd.spec import ModelSpec, ProblemSpec, spec_from_mapping, spec_hash
from mlsd.training import (
    RayParams,
    TrainingParams,
    fingerprint,
    fit_on_ray,
    labels,
    model_frame,
    search,
    time_split,
)

FIGURES = {"roc": "evaluation_roc.png", "calibration": "evaluation_calibration.png"}

log = logging.getLogger(__name__)


class GateParams(BaseModel):
    """conf ``gates:``: the spec's gates apply as written unless a run overrides them here."""

    model_config = ConfigDict(extra="forbid")

    max_gap_to_oracle: float | None = Field(
        default=None,
        ge=0,
        description="replaces every max_gap_to_oracle gate of the spec for this run (small data, whose "
        "holdout is too noisy for the spec's gates); null: the spec's",
    )


def gated_problem(problem: Mapping[str, Any], gates: Mapping[str, Any] | None) -> dict[str, Any]:
    """The spec mapping with every oracle-gap gate set to ``gates.max_gap_to_oracle`` (as it is when
    that is null); metrics without an oracle-gap gate keep what they have."""
    limit = GateParams.model_validate(as_dict(gates)).max_gap_to_oracle
    if limit is None:
        return dict(problem)
    metrics, relaxed = [], []
    for metric in problem["metrics"]:
        gate = dict(metric.get("gate") or {})
        if gate.get("max_gap_to_oracle") is not None:
            relaxed.append(f"{metric['name']} {gate['max_gap_to_oracle']} -> {limit}")
            gate["max_gap_to_oracle"] = limit
            metric = {**metric, "gate": gate}
        metrics.append(metric)
    log.warning(
        "gates.max_gap_to_oracle=%s overrides the spec's oracle-gap gates: %s", limit, ", ".join(relaxed)
    )
    return {**problem, "metrics": metrics}


@by_task
def split_training_set(
    problem: Mapping[str, Any], training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train / validation / holdout by time, plus the rows the ONNX parity check runs on."""
    spec = spec_from_mapping(problem)
    check_metric_names(spec.metrics, spec.label.group)
    return split_rows(spec, training, training_set)


def split_rows(
    spec: ProblemSpec, training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The time split and the parity rows of any task whose rows are model inputs (the metric
    check, which differs by task, is the caller's)."""
    params = TrainingParams.model_validate(as_dict(training))
    split = time_split(training_set, spec.label.timestamp, params.holdout, params.validation)
    # Parity is about numerics, not generalization: top the holdout up with the latest rows.
    fit_rows = pd.concat([split.train, split.valid])
    extra = max(0, params.parity_rows - len(split.holdout))
    parity_rows = pd.concat([split.holdout, fit_rows.tail(extra)]) if extra else split.holdout
    report = {
        "fingerprint": fingerprint(training_set),
        "rows": {"train": len(split.train), "valid": len(split.valid), "holdout": len(split.holdout)},
        "valid_start": split.valid_start.isoformat(),
        "holdout_start": split.holdout_start.isoformat(),
        "parity_rows": len(parity_rows),
    }
    return split.train, split.valid, split.holdout, parity_rows, report


@by_task
def tune_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> dict[str, Any]:
    """Search the spec's space with Ray Tune, scoring the primary metric on the validation span."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    inputs, primary = spec.model_input_schema(), spec.metrics[0]
    metric = METRICS[primary.name]
    data = (model_frame(inputs, train), labels(spec, train), model_frame(inputs, valid), labels(spec, valid))
    result = search(
        spec.model.family,
        inputs,
        spec.model.params,
        spec.model.search_space,
        data,
        lambda y, p: metric(y, p, **primary.params),
        higher_is_better=primary.higher_is_better,
        seed=params.seed,
        tune_params=params.tune,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    return tuning_report(primary.name, result)


def _fit(
    spec: ProblemSpec,
    model: ModelSpec,
    model_params: dict[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    rows: pd.DataFrame,
) -> tuple[Any, dict[str, Any]]:
    params = TrainingParams.model_validate(as_dict(training))
    ray_params = RayParams.model_validate(as_dict(ray))
    inputs = spec.inputs_of(model)
    fit = fit_on_ray(
        model.family,
        inputs,
        model_params,
        model_frame(inputs, rows),
        labels(spec, rows),
        seed=params.seed,
        num_workers=params.num_workers,
        threads_per_worker=params.threads_per_worker,
        ray_params=ray_params,
    )
    return fit.model, fit_report(model, model_params, rows, fit)


_fit_model, _fit_baseline = fit_nodes(_fit)
fit_model, fit_baseline = by_task(_fit_model), by_task(_fit_baseline)


def evaluate_gated(
    problem: Mapping[str, Any], gates: Mapping[str, Any] | None, *args: Any
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """:func:`evaluate_models` (of the task) under the gates of :func:`gated_problem`."""
    return evaluate_models(gated_problem(problem, gates), *args)


@by_task
def evaluate_models(
    problem: Mapping[str, Any],
    model: Any,
    baseline: Any,
    holdout: pd.DataFrame,
    split: Mapping[str, Any],
    generator: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Model, baseline and oracle (the generator's truth) on the holdout, with the spec's gates;
    grouped metrics (e.g. NDCG@k per session) rank within the holdout's ``label.group`` column.

    ``generator`` is unused here: the truth is a column of the holdout. A retrieval problem's
    oracle needs the truth of unplayed pairs, which its problem module recomputes from it.
    """
    spec = spec_from_mapping(problem)
    y = labels(spec, holdout)
    scores = {
        "model": model.predict_proba(model_frame(spec.inputs_of(spec.model), holdout))[:, 1],
        "baseline": baseline.predict_proba(model_frame(spec.inputs_of(spec.baseline), holdout))[:, 1],
        "oracle": holdout[spec.label.truth].to_numpy(),
    }
    info = {"start": split["holdout_start"], "end": holdout[spec.label.timestamp].max().isoformat()}
    groups = None if spec.label.group is None else holdout[spec.label.group].to_numpy()
    report = evaluation_report(spec.metrics, y, scores, holdout=info, groups=groups)
    plots = plot_curves(y, scores)
    return report, render_markdown(report, figures=FIGURES), plots["roc"], plots["calibration"]


@by_task
def export_model(problem: Mapping[str, Any], model: Any) -> bytes:
    """The fitted pipeline as one ONNX graph, inputs in the spec's order."""
    spec = spec_from_mapping(problem)
    inputs = spec.model_input_schema()
    meta = {"spec_hash": spec_hash(spec), "inputs": ",".join(i.name for i in inputs)}
    return bytes(to_onnx(model, inputs, metadata=meta, name=spec.name).SerializeToString())


@by_task
def check_parity(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    candidate: bytes,
    model: Any,
    parity_rows: pd.DataFrame,
) -> dict[str, Any]:
    """ONNX Runtime against the native model on the parity rows (report only; ``approve`` decides)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    inputs = spec.model_input_schema()
    frame = model_frame(inputs, parity_rows)
    return parity_report(candidate, model, inputs, frame, tolerance=params.parity_tolerance)


def approve(
    evaluation: Mapping[str, Any], parity: Mapping[str, Any], gate_params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Let the candidate through only if every gate and the parity check passed (the approval
    records a run's gate override, so the registered version does too).

    Raises:
        GateError: naming each failed gate with its numbers.
    """
    gates = [GateResult(**g) for g in evaluation["gates"]]
    problems = failures(gates)
    parity_problem = parity_failure(dict(parity))
    if parity_problem:
        problems.append(parity_problem)
    if problems:
        raise GateError(problems)
    approval = {
        "gates": [g.metric + " " + g.check for g in gates],
        "parity_max_abs_diff": parity["max_abs_diff"],
    }
    overrides = GateParams.model_validate(as_dict(gate_params)).model_dump(exclude_none=True)
    return {**approval, "gate_overrides": overrides} if overrides else approval


def create_pipeline() -> Pipeline:
    ray_inputs = ["params:problem", "params:training", "params:ray"]
    return pipeline(
        [
            node(
                split_training_set,
                ["params:problem", "params:training", "training_set"],
                ["train_rows", "valid_rows", "holdout", "parity_rows", "split"],
                name="split_training_set",
            ),
            node(tune_model, [*ray_inputs, "train_rows", "valid_rows"], "tuning", name="tune_model"),
            node(
                fit_model,
                [*ray_inputs, "train_rows", "valid_rows", "tuning"],
                ["candidate_model", "training_report"],
                name="fit_model",
            ),
            node(
                fit_baseline,
                [*ray_inputs, "train_rows", "valid_rows"],
                ["candidate_baseline", "baseline_report"],
                name="fit_baseline",
            ),
            node(
                evaluate_gated,
                [
                    "params:problem",
                    "params:gates",
                    "candidate_model",
                    "candidate_baseline",
                    "holdout",
                    "split",
                    "params:generator",
                ],
                ["evaluation", "evaluation_md", "evaluation_roc", "evaluation_calibration"],
                name="evaluate_models",
            ),
            node(export_model, ["params:problem", "candidate_model"], "candidate_onnx", name="export_model"),
            node(
                check_parity,
                ["params:problem", "params:training", "candidate_onnx", "candidate_model", "parity_rows"],
                "parity",
                name="check_parity",
            ),
            node(approve, ["evaluation", "parity", "params:gates"], "approval", name="approve"),
            node(
                register_model,
                [
                    "params:problem",
                    "params:registry",
                    "params:serving",
                    "approval",
                    "candidate_onnx",
                    "evaluation",
                    "parity",
                    "training_report",
                    "tuning",
                    "split",
                ],
                "registered_model",
                name="register_model",
            ),
        ]
    )
