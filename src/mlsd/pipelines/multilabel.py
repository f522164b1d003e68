"""The train nodes of a multi-label problem (spec task ``multilabel``).

Same datasets and names as the binary nodes (mlsd.pipelines.by_task picks these): the label is a
``[rows, classes]`` matrix (the spec's ``label.classes``), the model and the baseline are one
binary pipeline per class fitted together (mlsd.training.OneModelPerLabel, through Ray), the
evaluation averages each metric over classes (``macro_``/``micro_``) with a per-class table, and
the exported graph answers ``label_scores`` ``[N, classes]`` whose parity is checked class by class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mlsd.errors import SpecError
from mlsd.evaluation import check_multilabel_metrics, multilabel_metric, multilabel_report, render_markdown
from mlsd.export import MULTILABEL_OUTPUT, multilabel_to_onnx, parity_report
from mlsd.pipelines import as_dict
from mlsd.pipelines.fitting import tuning_report
from mlsd.pipelines.training import split_rows
from mlsd.spec import ProblemSpec, spec_from_mapping, spec_hash
from mlsd.training import RayParams, TrainingParams, labels, model_frame, search


def classes(spec: ProblemSpec) -> list[str]:
    """The spec's classes, in output column order.

    Raises:
        SpecError: the spec lists none (the validator requires them for task multilabel).
    """
    if spec.label.classes is None:
        raise SpecError(f"{spec.name}: task multilabel needs label.classes")
    return list(spec.label.classes)


def split_training_set(
    problem: Mapping[str, Any], training: Mapping[str, Any], training_set: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The time split and parity rows, after checking every metric is ``macro_``/``micro_``."""
    spec = spec_from_mapping(problem)
    check_multilabel_metrics(spec.metrics)
    return split_rows(spec, training, training_set)


def tune_model(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    ray: Mapping[str, Any],
    train: pd.DataFrame,
    valid: pd.DataFrame,
) -> dict[str, Any]:
    """Ray Tune over the spec's space: each trial one model per class, scored by the primary
    (averaged) metric on the validation span."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    inputs, primary = spec.model_input_schema(), spec.metrics[0]
    data = (model_frame(inputs, train), labels(spec, train), model_frame(inputs, valid), labels(spec, valid))
    result = search(
        spec.model.family,
        inputs,
        spec.model.params,
        spec.model.search_space,
        data,
        lambda y, p: multilabel_metric(primary, y, p),
        higher_is_better=primary.higher_is_better,
        seed=params.seed,
        tune_params=params.tune,
        ray_params=RayParams.model_validate(as_dict(ray)),
    )
    return tuning_report(primary.name, result)


def per_label_markdown(
    report: Mapping[str, Any], scorers: Sequence[str] = ("model", "baseline", "oracle")
) -> str:
    """The report's per-class values as a Markdown table (one row per class and base metric)."""
    per = report["per_label"]
    counts = report["holdout"]["positives_per_label"]
    lines = ["", "## Per label", "", f"| label | positives | metric | {' | '.join(scorers)} |"]
    lines.append("|---|---:|---|" + "---:|" * len(scorers))
    for label, values in per["model"].items():
        for metric in values:
            cells = " | ".join(f"{per[s][label][metric]:.4f}" for s in scorers)
            lines.append(f"| {label} | {counts[label]:,} | {metric} | {cells} |")
    return "\n".join(lines) + "\n"


def evaluate_models(
    problem: Mapping[str, Any],
    model: Any,
    baseline: Any,
    holdout: pd.DataFrame,
    split: Mapping[str, Any],
    generator: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str, bytes, bytes]:
    """Model, baseline and oracle (the generator's true probability per class) on the holdout:
    averaged metrics with gates, and per class.

    One ROC or calibration curve does not summarize many classes: the two figure outputs are
    empty files and the report says so.
    """
    spec = spec_from_mapping(problem)
    scores = {
        "model": model.predict_score(model_frame(spec.inputs_of(spec.model), holdout)),
        "baseline": baseline.predict_score(model_frame(spec.inputs_of(spec.baseline), holdout)),
        "oracle": holdout[spec.label.truth_columns()].to_numpy(dtype="float64"),
    }
    info = {"start": split["holdout_start"], "end": holdout[spec.label.timestamp].max().isoformat()}
    report = multilabel_report(spec.metrics, classes(spec), labels(spec, holdout), scores, holdout=info)
    note = (
        "\nROC and calibration curves are per class in a multi-label problem; their figure files are empty.\n"
    )
    return report, render_markdown(report, figures={}) + per_label_markdown(report) + note, b"", b""


def export_model(problem: Mapping[str, Any], model: Any) -> bytes:
    """One ONNX graph for every class: model inputs -> ``label_scores`` [N, classes]."""
    spec = spec_from_mapping(problem)
    inputs = spec.model_input_schema()
    meta = {"spec_hash": spec_hash(spec), "inputs": ",".join(i.name for i in inputs)}
    graph = multilabel_to_onnx(model, inputs, classes(spec), metadata=meta, name=spec.name)
    return bytes(graph.SerializeToString())


def check_parity(
    problem: Mapping[str, Any],
    training: Mapping[str, Any],
    candidate: bytes,
    model: Any,
    parity_rows: pd.DataFrame,
) -> dict[str, Any]:
    """ONNX Runtime's scores against the native per-class models', class by class (report only)."""
    spec, params = spec_from_mapping(problem), TrainingParams.model_validate(as_dict(training))
    inputs = spec.model_input_schema()
    return parity_report(
        candidate,
        model,
        inputs,
        model_frame(inputs, parity_rows),
        tolerance=params.parity_tolerance,
        output=MULTILABEL_OUTPUT,
        classes=classes(spec),
    )


NODES = {
    fn.__name__: fn for fn in (split_training_set, tune_model, evaluate_models, export_model, check_parity)
}
"""The multi-label version of each node that differs (mlsd.pipelines.by_task); the fit nodes are
the binary ones: a ``[rows, classes]`` label makes Ray fit one model per class."""
