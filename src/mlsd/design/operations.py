"""Sections 5 and 6 of the design document: serving and monitoring, and the wrap-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlsd.design.markdown import bullets, code, codes, constraint, missing, number, param, param_text, table
from mlsd.spec import ColumnSpec, ProblemSpec

CANARY_PARAMETERS = {
    "min_requests": "served requests per arm before deciding",
    "min_feedback": "labelled requests per arm before deciding",
    "alpha": "significance of every test",
    "max_error_rate": "canary fallbacks per routed request",
    "max_p99_ratio": "canary p99 / stable p99 of the models' own CPU time per call",
    "min_p99_increase_share": "and canary p99 - stable p99, as a share of the latency budget",
    "log_loss_margin": "promote if the canary's log loss is at most this much worse",
    "auc_margin": "roll back if the canary's AUC is lower by more",
    "min_positives": "labelled positives before AUCs are compared",
}
"""The canary analysis parameters the document lists (mlsd.monitoring.CanaryParams), in order."""


def _request(spec: ProblemSpec) -> list[str]:
    serving, rows = spec.serving, []
    for key in serving.entity_keys:
        entity = next(e for e in spec.entities if e.join_key == key)
        column = serving.context.get(key) or ColumnSpec(dtype=entity.dtype)
        rows.append(
            (
                code(key),
                f"entity key of {code(entity.name)}; also context"
                if key in serving.context
                else f"entity key of {code(entity.name)}",
                constraint(column),
            )
        )
    for name, column in serving.context.items():
        if name not in serving.entity_keys:
            rows.append((code(name), "request context", constraint(column)))
    return table(["field", "role", "type and constraints"], rows)


def _retrain_triggers(spec: ProblemSpec) -> list[str]:
    drift = spec.drift
    triggers = [f"more than {drift.max_drifted_share:.0%} of the drift columns drifted"]
    if drift.retrain_on_prediction_drift:
        triggers.append("the score distribution drifted")
    if drift.max_log_loss_increase is not None:
        increase = f"{drift.max_log_loss_increase:.0%}"
        triggers.append(f"stable's online log loss exceeds its holdout log loss by more than {increase}")
    return triggers


def _canary(parameters: Mapping[str, Any]) -> list[str]:
    if param(parameters, "canary_analysis") is None:
        return [param_text(parameters, "canary_analysis")]
    rows = [
        (code(key), param_text(parameters, f"canary_analysis.{key}"), meaning)
        for key, meaning in CANARY_PARAMETERS.items()
    ]
    return table(["parameter", "value", "meaning"], rows)


def _canary_analysis(parameters: Mapping[str, Any]) -> list[str]:
    return [
        "The canary is compared with stable on the requests each served, joined to their delayed "
        "labels; the verdict is promote, roll back or keep collecting.",
        "",
        *_canary(parameters),
    ]


def _no_verdict(spec: ProblemSpec) -> list[str]:
    return [
        "The paired analysis compares probabilities (per-request log loss, AUC); the score of a "
        f"{spec.task} model is not one, so a running canary gets no automatic verdict: the monitoring "
        "pipeline reports keep collecting with what to compare instead, and `mlsd rollout promote` "
        "or `mlsd rollout rollback` decides."
    ]


def serving(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """5. Deployment and serving: request, routing, latency, prediction log, monitoring, canary."""
    s = spec.serving
    lines = [
        "## 5. Deployment and serving",
        "",
        "### Request",
        "",
        *_request(spec),
        "",
        "The response carries the score, the model tag that produced it, the rollout arm (stable or "
        "canary), the request id and the stored features that were missing and got their default"
        + (
            "; and the decision: `answer` (answer with the first item, or hand the query to a "
            "person) and its `answer_p`."
            if spec.text_retrieval is not None and spec.text_retrieval.escalation is not None
            else "."
        ),
        "",
        "### Hot path",
        "",
        f"validate the request -> route by {code(s.routing_key)} -> read the stored features for "
        f"{codes(s.entity_keys)} from the online store -> ONNX Runtime on the inputs in model order -> "
        f"respond, all within the **{number(s.latency_budget_ms)} ms** budget. Then the prediction is "
        f"logged to {param_text(parameters, 'serving.prediction_log')} (on disk within "
        f"{param_text(parameters, 'serving.flush_ms')} ms) and counted in Prometheus metrics.",
        "",
        "### Routing: stable, canary, shadow",
        "",
        f"{param_text(parameters, 'serving.rollout_file')} names the stable model, an optional canary "
        f"that gets a share of {code(s.routing_key)} values (sticky by a hash of the key), and shadows "
        "that score every request off the response path, only logged. A canary error or timeout "
        "falls back to stable for that request.",
        "",
        "### Monitoring and retraining",
        "",
        f"- **Drift columns:** {codes(spec.drift.columns)}, compared between the training set and "
        f"the last {param_text(parameters, 'monitoring.window')} of served requests "
        f"({param_text(parameters, 'monitoring.num_method')} for numbers, "
        f"{param_text(parameters, 'monitoring.cat_method')} for categories"
        f"{', text by its token count' if spec.text_inputs() else ''}"
        f"{', a vector per dimension' if len(spec.drift_inputs()) > len(spec.drift.columns) else ''}"
        "; a column drifts at "
        f"distance >= {param_text(parameters, 'monitoring.threshold')}).",
        "- **Retrain when:** " + "; or ".join(_retrain_triggers(spec)) + ".",
        "",
        "### Canary analysis",
        "",
        *(_canary_analysis(parameters) if spec.scores_are_probabilities else _no_verdict(spec)),
    ]
    return lines


def wrap_up(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """6. Wrap-up: bottlenecks, trade-offs and how the system scales, from the spec's design block."""
    design = spec.design
    parts = (
        ("Bottlenecks", "bottlenecks", "what limits the system first"),
        ("Trade-offs", "tradeoffs", "the choices made and what they cost"),
        ("Scaling", "scaling", "how the system grows past one machine"),
    )
    lines = ["## 6. Wrap-up"]
    for title, field, what in parts:
        items = getattr(design, field) if design else []
        lines += ["", f"### {title}", ""]
        lines += bullets(items) if items else [missing(f"design.{field}", what)]
    return lines
