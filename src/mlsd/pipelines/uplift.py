"""The train nodes of an uplift problem (spec task ``uplift``).

Same datasets and names as the binary nodes (mlsd.pipelines.by_task picks these), different work:
the rows are a randomized experiment (the spec's ``uplift.treatment`` column), the model is a
T-learner whose score is the estimated effect ``tau``, the evaluation allocates the spec's budget
greedily by ``tau / cost`` and compares it with the allocation by the generator's true effect
(the oracle), and the exported graph answers ``uplift`` = P(treated) - P(control).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import SpecError
from mlsd.evaluation import (
    UPLIFT_METRICS,
    UpliftHoldout,
    allocate,
    check_uplift_metrics,
    render_markdown,
    uplift_report,
)
from mlsd.export import UPLIFT_OUTPUT, parity_report, uplift_to_onnx
from mlsd.pipelines import as_dict
from mlsd.pipelines.batch_scoring import score_table
from mlsd.pipelines.fitting import fit_nodes, fit_report, tuning_report
from mlsd.pipelines.training import split_rows
from mlsd.scoring.batch import SCORE
from mlsd.spec import ModelSpec, ProblemSpec, UpliftSpec, spec_from_mapping, spec_hash
from mlsd.training import (
    RayParams,
    TLearner,
    TrainingParams,
    fit_uplift_on_ray,
    labels,
    model_frame,
    search_uplift,
)


def _uplift(spec: ProblemSpec) -> UpliftSpec:
    """The spec's uplift block (the spec validator requires it for task uplift).

    Raises:
        SpecError: the spec has none.
    """
    if spec.uplift is None:
        raise SpecError(f"{spec.name}: task uplift needs an uplift block (treatment, cost, budget_share)")
    return spec.uplift


def _experiment(spec: ProblemSpec, rows: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Model inputs, outcome and treatment of ``rows``."""
    treated = rows[_uplift(spec).treatment].to_numpy(dtype=np.int64)
    return model_frame(spec.model_input_schema(), rows), labels(spec, rows), treated


def _holdout(spec: ProblemSpec, rows: pd.DataFrame) -> UpliftHoldout:
    uplift = _uplift(spec)
    return UpliftHoldout.from_share(
        labels(spec, rows),
        rows[uplift.treatment],
        rows[spec.label.truth],
        rows[uplift.cost],
        uplift.budget_share,
    )


def split_training_set(
    problem: Mapping[str, Any], training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train / validation / holdout by time and the parity rows, after checking the metrics are
    uplift metrics."""
    spec = spec_from_mapping(problem)
    check_uplift_metrics(spec.metrics)
    return split_rows(spec, training, training_set)


def tune_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> dict[str, Any]:
    """Ray Tune over the spec's space: a T-learner per trial fitted on the training span, scored
    by the primary uplift metric on the validation span."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    primary = spec.metrics[0]
    x_valid, holdout = _experiment(spec, valid)[0], _holdout(spec, valid)

    def score(model: TLearner) -> float:
        return UPLIFT_METRICS[primary.name](holdout, model.predict_score(x_valid), **primary.params)

    result = search_uplift(
        spec.model.family,
        spec.model_input_schema(),
        spec.model.params,
        spec.model.search_space,
        _experiment(spec, train),
        score,
        higher_is_better=primary.higher_is_better,
        seed=params.seed,
        tune_params=params.tune,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    return tuning_report(primary.name, result)


def _fit(
    spec: ProblemSpec,
    model: ModelSpec,
    params: dict[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    rows: pd.DataFrame,
) -> tuple[TLearner, dict[str, Any]]:
    seed = TrainingParams.model_validate(as_dict(training)).seed
    data = _experiment(spec, rows)
    fit = fit_uplift_on_ray(
        model.family,
        spec.model_input_schema(),
        params,
        data,
        seed=seed,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    report = fit_report(model, params, rows, fit, learner="t_learner", treated_rows=int(data[2].sum()))
    return fit.model, report


fit_model, fit_baseline = fit_nodes(_fit)  # the baseline family as a T-learner too


def evaluate_models(
    problem: Mapping[str, Any],
    model: TLearner,
    baseline: TLearner,
    holdout: pd.DataFrame,
    split: Mapping[str, Any],
    generator: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """The effects estimated by model and baseline, and the true effect (oracle), on the holdout:
    Qini/AUUC from observed outcomes, the budgeted allocation against the oracle's.

    ROC and calibration curves do not apply to effects: the two figure outputs are empty files
    and the report says so.
    """
    spec = spec_from_mapping(problem)
    frame = model_frame(spec.model_input_schema(), holdout)
    scores = {
        "model": model.predict_score(frame),
        "baseline": baseline.predict_score(frame),
        "oracle": holdout[spec.label.truth].to_numpy(dtype=np.float64),
    }
    info = {
        "start": split["holdout_start"],
        "end": holdout[spec.label.timestamp].max().isoformat(),
        "budget_share": _uplift(spec).budget_share,
    }
    report = uplift_report(spec.metrics, _holdout(spec, holdout), scores, info=info)
    markdown = render_markdown(report, figures={})
    note = "\nROC and calibration curves do not apply to effect estimates; their figure files are empty.\n"
    return report, markdown + note, b"", b""


def export_model(problem: Mapping[str, Any], model: TLearner) -> bytes:
    """The T-learner as one ONNX graph: model inputs -> ``uplift`` [N, 1]."""
    spec = spec_from_mapping(problem)
    inputs = spec.model_input_schema()
    meta = {"spec_hash": spec_hash(spec), "inputs": ",".join(i.name for i in inputs)}
    return bytes(uplift_to_onnx(model, inputs, metadata=meta, name=spec.name).SerializeToString())


def check_parity(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    candidate: bytes,
    model: TLearner,
    parity_rows: pd.DataFrame,
) -> dict[str, Any]:
    """ONNX Runtime's effect against the native T-learner's on the parity rows (report only)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    inputs = spec.model_input_schema()
    frame = model_frame(inputs, parity_rows)
    return parity_report(
        candidate, model, inputs, frame, tolerance=params.parity_tolerance, output=UPLIFT_OUTPUT
    )


def score_batch(
    problem: Mapping[str, Any],
    registry: Mapping[str, Any],
    ray: Mapping[str, Any],
    batch_scoring: Mapping[str, Any],
    training_set: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A campaign: score the table through Ray Data, then treat rows greedily by tau / cost until
    ``uplift.budget_share`` of the cost of treating every row is spent (column ``treat``)."""
    spec = spec_from_mapping(problem)
    cost = _uplift(spec).cost
    scores, report = score_table(spec, registry, ray, batch_scoring, training_set, keep=[cost])
    budget = _uplift(spec).budget_share * float(scores[cost].sum())
    scores["treat"] = allocate(scores[SCORE].to_numpy(), scores[cost].to_numpy(), budget)
    treated = scores[scores["treat"]]
    report["allocation"] = {
        "budget": round(budget, 2),
        "spent": round(float(treated[cost].sum()), 2),
        "treated_rows": len(treated),
        "expected_incremental_conversions": round(float(treated[SCORE].sum()), 2),
    }
    return scores, report


NODES = {
    fn.__name__: fn
    for fn in (
        split_training_set,
        tune_model,
        fit_model,
        fit_baseline,
        evaluate_models,
        export_model,
        check_parity,
        score_batch,
    )
}
"""The uplift version of each node that differs (mlsd.pipelines.by_task)."""
