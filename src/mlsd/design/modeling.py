"""Sections 3 and 4 of the design document: the model, and how it is trained and evaluated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlsd.design.markdown import code, codes, param, param_text, table
from mlsd.spec import MetricSpec, ModelInput, ModelSpec, ProblemSpec

PROMOTE = {
    "first": "a new version becomes stable only if nothing is stable yet",
    "always": "every new version becomes stable",
    "never": "versions become stable only when promoted",
}
"""What each ``registry.promote`` value does (mlsd.registry.RegistryParams)."""


_TEXT_IN_GRAPH = "; text is tokenized and TF-IDF weighted inside the graph, so a request sends the raw text"


def _params(params: Mapping[str, Any]) -> str:
    return code(json.dumps(dict(params))) if params else "defaults"


def _model_line(role: str, model: ModelSpec) -> str:
    reads = "" if model.inputs is None else f", reading only {', '.join(code(i) for i in model.inputs)}"
    return f"- **{role}:** {code(model.family)} with {_params(model.params)}{reads}"


def _encoding(inp: ModelInput) -> str:
    """What the graph does with an input before the model: its categories, or its TF-IDF."""
    if inp.text is not None:
        t = inp.text
        vocabulary = "all terms" if t.max_features is None else f"top {t.max_features} terms"
        grams = "tokens" if t.ngram_max == 1 else f"1-{t.ngram_max}-grams"
        return f"text: TF-IDF of {grams} ({vocabulary}, min_df {t.min_df})"
    return ", ".join(inp.categories) if inp.categories else ""


def _search_space(model: ModelSpec) -> list[str]:
    if not model.search_space:
        return ["No search space: the model trains with its parameters as given."]
    rows = []
    for name, dist in model.search_space.items():
        kind, values = next(iter(dist.items())) if isinstance(dist, Mapping) and dist else ("fixed", dist)
        rows.append((code(name), kind, code(json.dumps(values))))
    return table(["parameter", "distribution", "values"], rows)


def _inputs(spec: ProblemSpec) -> list[str]:
    source = {name: f"feature view {code(fv.name)}" for fv in spec.feature_views for name in fv.fields}
    rows = []
    for i, inp in enumerate(spec.model_input_schema(), start=1):
        where = source.get(inp.name, "request context")
        rows.append((i, code(inp.name), inp.dtype, where, _encoding(inp)))
    return table(["#", "input", "dtype", "from", "categories"], rows)


def _ranker(spec: ProblemSpec) -> list[str]:
    """A two-stage problem's second stage, and why both stages are one graph."""
    r = spec.retrieval
    if r is None:
        return []
    columns = ", ".join(code(c) for c in r.item_columns) or "none"
    return [
        _model_line("Ranker (stage 2)", r.ranker)
        + f": re-scores the model's top {r.candidates} candidates (the model fits on "
        f"{code(r.interaction)}) with P({code(spec.label.column)} > 0) from the stage-1 score, user "
        f"and item activity and label rates, and the item columns {columns} against the user's "
        "usual value; it learns on a training-span model's candidates labelled by the validation "
        "span. Both stages are one ONNX graph, so they are registered, rolled out, canaried and "
        "rolled back as one model.",
    ]


def _escalation(spec: ProblemSpec) -> list[str]:
    """An answer-or-escalate problem's decision: the escalation head and its threshold."""
    escalation = spec.text_retrieval.escalation if spec.text_retrieval else None
    if escalation is None:
        return []
    return [
        "- **Answer or escalate:** model and baseline each fit an escalation head, a logistic model "
        "on the top item's score and the query's TF-IDF vector, learned from whether a logged search "
        f"was resolved; the graph outputs its `answer_p`, and the server answers with the top item "
        f"when it is at least {escalation.answer_at}, else hands the query to a person. A query with "
        "no word of the vocabulary (unknown words and stop words only) gets `answer_p` 0: nothing in "
        "it points to an item, so it is escalated rather than answered with the most popular one. "
        "Words match case-insensitively (ASCII lowercase, in the graph too).",
    ]


def model(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """3. Model: the framing, baseline and model family, search space, inputs, ONNX export."""
    label = spec.label
    lines = [
        "## 3. Model",
        "",
        f"- **Framing:** {code(spec.task)}; the label is "
        f"{codes(f'{label.table}.{c}' for c in label.columns())}, "
        f"the generator's truth {codes(label.truth_columns())} sits beside it (never a feature).",
        _model_line("Baseline", spec.baseline),
        _model_line("Model", spec.model),
        *_ranker(spec),
        *_escalation(spec),
        "",
        "### Search space (Ray Tune)",
        "",
        *_search_space(spec.model),
        "",
        "### Model inputs, in order",
        "",
        *_inputs(spec),
        "",
        "### Export",
        "",
        "Preprocessing and model are exported as one ONNX graph with the inputs above in this order "
        f"(numbers as float32, strings as strings{_TEXT_IN_GRAPH if spec.text_inputs() else ''}); "
        "serving loads only ONNX, never a pickle. The "
        f"graph must match the native model on at least {param_text(parameters, 'training.parity_rows')} "
        f"rows to within {param_text(parameters, 'training.parity_tolerance')} before it is registered.",
    ]
    return lines


def _gate(metric: MetricSpec) -> str:
    gate = metric.gate
    if gate is None:
        return "reported only"
    parts = []
    if gate.max_gap_to_oracle is not None:
        parts.append(f"gap to oracle <= {gate.max_gap_to_oracle}")
    if gate.must_beat_baseline:
        parts.append("beats the baseline")
    return "; ".join(parts) or "reported only"


def _metrics(spec: ProblemSpec) -> list[str]:
    rows = []
    for i, m in enumerate(spec.metrics):
        name = code(m.name) + (" (tuning target)" if i == 0 else "")
        name += " of stage 1's candidates" if m.stage is not None else ""
        params = _params(m.params) if m.params else ""
        rows.append((name, "higher" if m.higher_is_better else "lower", params, _gate(m)))
    return table(["metric", "better", "params", "gate"], rows)


def training(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """4. Training and evaluation: time split, Ray Tune and Train, metrics, gates, the oracle."""
    primary = spec.metrics[0].name
    lines = [
        "## 4. Training and evaluation",
        "",
        f"- **Split by time** on {code(spec.label.timestamp)}: the last "
        f"{param_text(parameters, 'training.holdout')} are the holdout (evaluation only), the "
        f"{param_text(parameters, 'training.validation')} before them the validation span (tuning), "
        "everything earlier the training span. No random split: the model is judged on a future "
        "it has not seen, as in production.",
        f"- **Tuning:** Ray Tune samples {param_text(parameters, 'training.tune.num_samples')} "
        f"configurations of the search space ({param_text(parameters, 'training.tune.max_concurrent')} "
        f"at a time), each scored by {code(primary)} on the validation span.",
        f"- **Training:** the best configuration is refit on training + validation with Ray Train "
        f"({param_text(parameters, 'training.num_workers')} workers); the baseline fits on the same rows.",
        "",
        "### Offline metrics and gates",
        "",
        *_metrics(spec),
        "",
        f"**The oracle** scores the holdout with {code(spec.label.truth)}, the generator's true value "
        "for each row: the best any model can do on these rows. The gap to the oracle says how much "
        "achievable quality the model leaves on the table, and the gates above bound it. A candidate "
        "is registered only if every gate and the ONNX parity check pass; otherwise the run stops, "
        "the reports stay, and the stable model is unchanged.",
        "",
        _registration(parameters),
    ]
    return lines


def _registration(parameters: Mapping[str, Any]) -> str:
    canary = param(parameters, "registry.canary_percent")
    start = (
        "new versions are not started as a canary (`registry.canary_percent` unset)"
        if canary is None
        else f"each new version starts as the canary on {canary}% of routing keys (`registry.canary_percent`)"
    )
    promote = param(parameters, "registry.promote")
    meaning = PROMOTE.get(promote, "")
    return (
        f"**Registration:** `registry.promote` is {param_text(parameters, 'registry.promote')}"
        f"{f' ({meaning})' if meaning else ''}; {start}."
    )
