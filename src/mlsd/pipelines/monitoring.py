"""``kedro run --pipelines monitoring``: served traffic vs the training data, quality, canary, retrain.

load the prediction log (the current window) and feedback -> a reference sample of the training
data scored by the stable model -> Evidently drift report (HTML + JSON) and per-variant quality
-> snapshots into the Evidently workspace -> the retraining decision -> the canary verdict
(applied when ``monitoring.apply_canary_verdict`` is on). Paths in conf are relative to the
project root, where ``kedro run`` runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.pipeline import Pipeline, node, pipeline

from mlsd.errors import ConfigError
from mlsd.export import onnx_feeds, onnx_scores, session
from mlsd.monitoring import CanaryParams
from mlsd.monitoring.canary import NO_AUTOMATIC_VERDICT
from mlsd.monitoring.drift import (
    PREDICTION,
    DriftParams,
    column_kinds,
    drift_report,
    expired_views,
    headline,
    reference_as_served,
    served_defaults,
    span,
    summarize,
    with_headline,
)
from mlsd.monitoring.logs import read_feedback, served_frame, with_feedback
from mlsd.monitoring.quality import hit_rate_by_variant, quality_by_variant
from mlsd.monitoring.retrain import retrain_reasons
from mlsd.monitoring.snapshots import add_snapshots
from mlsd.pipelines import as_dict, by_task
from mlsd.registry import MODEL_FILE, ModelRegistry, RegistryParams
from mlsd.serving import ServingParams
from mlsd.serving.canary_check import check_canary
from mlsd.serving.prediction_log import read_log
from mlsd.serving.rollout import read_rollout, served_outputs
from mlsd.spec import ProblemSpec, spec_from_mapping
from mlsd.training import model_frame


def _stable(problem: Mapping[str, Any], registry: Mapping[str, Any]) -> tuple[ModelRegistry, str]:
    spec = spec_from_mapping(problem)
    store = ModelRegistry(RegistryParams.model_validate(as_dict(registry)).home, spec.name)
    tag = store.stable()
    if tag is None:
        raise ConfigError("monitoring: no stable model in the registry yet; run `kedro run` first")
    return store, tag


def stable_graph(problem: Mapping[str, Any], registry: Mapping[str, Any]) -> bytes:
    """The ONNX bytes of the stable model.

    Raises:
        ConfigError: nothing is stable yet.
    """
    store, tag = _stable(problem, registry)
    return (store.get(tag).path / MODEL_FILE).read_bytes()


QUALITY: dict[str, Callable[..., dict[str, Any]]] = {
    "retrieval": hit_rate_by_variant,
    "uplift": functools.partial(hit_rate_by_variant, rate="observed_rate"),
    "multilabel": functools.partial(hit_rate_by_variant, rate="label_share"),
}
"""Online quality per variant, by task (default: Evidently's binary classification metrics)."""


def load_traffic(serving: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every served prediction-log record with its feedback label (NaN until known), and the feedback."""
    params = ServingParams.model_validate(as_dict(serving))
    served = served_frame(read_log(Path(params.prediction_log)))
    feedback = read_feedback(Path(params.feedback_log))
    return with_feedback(served, feedback), feedback


@by_task
def reference_sample(
    problem: Mapping[str, Any],
    monitoring: Mapping[str, Any],
    registry: Mapping[str, Any],
    training_set: pd.DataFrame,
) -> pd.DataFrame:
    """A seeded sample of the training set's latest span, its model inputs scored by the stable model."""
    spec, params = spec_from_mapping(problem), DriftParams.model_validate(as_dict(monitoring))
    store, tag = _stable(problem, registry)
    inputs = spec.model_input_schema()
    ts = training_set[spec.label.timestamp]
    recent = training_set[ts >= ts.max() - params.reference_span]
    rows = recent.sample(min(params.reference_rows, len(recent)), random_state=params.seed)
    frame = model_frame(inputs, rows)
    frame[PREDICTION] = _scores(spec, (store.get(tag).path / MODEL_FILE).read_bytes(), frame)
    return frame.reset_index(drop=True)


def _scores(spec: ProblemSpec, graph: bytes, frame: pd.DataFrame) -> np.ndarray:
    """The served score of each row of ``frame`` (the model inputs) under ``graph``."""
    inputs = spec.model_input_schema()
    output, feeds = served_outputs(spec)[0], onnx_feeds(inputs, frame[[i.name for i in inputs]])
    if spec.label.classes is None:
        return onnx_scores(session(graph), feeds, output).astype(np.float64)
    # the mean class score, as the server logs it (mlsd.serving.scorer)
    return np.asarray(session(graph).run([output], feeds)[0], dtype=np.float64).mean(axis=1)


def _newest_rows(
    spec: ProblemSpec, feature_tables: Mapping[str, Callable[[], pd.DataFrame]]
) -> dict[str, Any]:
    """View name -> the newest ``event_timestamp`` of its feature table (what the online store was
    loaded with), for the online views with a TTL."""
    newest: dict[str, Any] = {}
    for view in spec.feature_views:
        load = feature_tables.get(view.source)
        if view.online and view.ttl > timedelta(0) and load is not None:
            stamps = pd.to_datetime(load()["event_timestamp"], utc=True)
            newest[view.name] = stamps.max().to_pydatetime() if len(stamps) else None
    return newest


def _as_served(
    spec: ProblemSpec, reference: pd.DataFrame, expired: Mapping[str, Any], graph: Callable[[], bytes]
) -> pd.DataFrame:
    """The reference with the expired views' fields at their defaults, rescored when it holds every
    model input (a task's own reference may not: its score is then left as it was)."""
    out = reference_as_served(reference, served_defaults(spec, expired))
    if all(i.name in out for i in spec.model_input_schema()):
        out[PREDICTION] = _scores(spec, graph(), out)
    return out


def monitor(
    problem: Mapping[str, Any],
    monitoring: Mapping[str, Any],
    registry: Mapping[str, Any],
    reference: pd.DataFrame,
    traffic: pd.DataFrame,
    feature_tables: Mapping[str, Callable[[], pd.DataFrame]],
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Drift of the current window against the reference, quality per variant, and whether to retrain.

    Returns the summary (``drift.json``), the drift report's HTML (with a headline: window,
    verdict, limit), and the retraining decision. Below ``monitoring.min_rows`` served requests in
    the window there is no drift verdict. A feature view the online store holds nothing fresher
    than its TTL of is compared as served: its fields at their defaults in the reference too.
    """
    spec, params = spec_from_mapping(problem), DriftParams.model_validate(as_dict(monitoring))
    now = datetime.now(UTC)
    start = now - params.window if params.since is None else params.since.astimezone(UTC)
    current = traffic[traffic["ts"] >= pd.Timestamp(start)]
    categorical = {i.name for i in spec.model_input_schema() if i.dtype == "string"}
    kinds = column_kinds(spec.drift_inputs(), categorical, set(spec.text_inputs()))
    summary: dict[str, Any] = {"generated_at": now.isoformat(), "problem": spec.name}
    summary["window"] = {"start": start.isoformat(), "end": now.isoformat(), "length": span(now - start)}
    store, tag = _stable(problem, registry)
    expired = expired_views(spec, _newest_rows(spec, feature_tables), now)
    if expired:
        summary["expired_views"] = expired
        reference = _as_served(
            spec, reference, expired, lambda: (store.get(tag).path / MODEL_FILE).read_bytes()
        )
    snapshots = []
    if len(current) >= params.min_rows:
        snapshot = drift_report(reference, current, kinds, params, timestamp=now)
        snapshots.append(snapshot)
        summary.update(summarize(snapshot, kinds, params, spec.drift.max_drifted_share, reference))
        page = snapshot.get_html_str(as_iframe=False)
    else:
        summary.update(
            rows={"reference": len(reference), "current": len(current)},
            status=f"{len(current)} served requests in the window; drift needs {params.min_rows}",
        )
        page = "<html><body></body></html>"
    for view, info in expired.items():
        for column in set(info["fields"]) & set(summary.get("columns") or {}):
            summary["columns"][column]["as_served"] = f"{view} expired: default on both sides"
    quality = QUALITY.get(spec.task, quality_by_variant)(current, min_labelled=1, timestamp=now)
    summary["quality"] = {variant: numbers for variant, (_, numbers) in quality.items()}
    snapshots += [snap for snap, _ in quality.values()]
    offline = store.get(tag).metadata.get("metrics", {}).get("model", {}).get("log_loss")
    reasons = retrain_reasons(
        summary,
        spec.drift.max_drifted_share,
        spec.drift.retrain_on_prediction_drift,
        spec.drift.max_log_loss_increase,
        offline,
        params.min_rows,
    )
    summary["retrain"] = {"needed": bool(reasons), "reasons": reasons}
    summary["snapshots"] = add_snapshots(
        Path(params.workspace), spec.name, spec.question, spec.drift_inputs(), snapshots
    )
    retrain = {"needed": bool(reasons), "reasons": reasons, "stable": tag, "at": now.isoformat()}
    return summary, with_headline(page, headline(summary, params.reference_span)), retrain


@by_task
def canary_verdict(
    problem: Mapping[str, Any],
    monitoring: Mapping[str, Any],
    registry: Mapping[str, Any],
    serving: Mapping[str, Any],
    canary_analysis: Mapping[str, Any],
    traffic: pd.DataFrame,
    feedback: pd.DataFrame,
) -> dict[str, Any]:
    """The canary analysis over the logs since the canary started; applied if configured.

    A task in :data:`NO_AUTOMATIC_VERDICT` gets no verdict: the decision stays
    ``keep_collecting`` and the reason says what to compare and which command decides.
    """
    rollout_file = Path(ServingParams.model_validate(as_dict(serving)).rollout_file)
    task = str(problem.get("task"))
    if task in NO_AUTOMATIC_VERDICT:
        return _no_verdict(rollout_file, NO_AUTOMATIC_VERDICT[task])
    params = DriftParams.model_validate(as_dict(monitoring))
    store, _ = _stable(problem, registry)
    canary = read_rollout(rollout_file).canary
    at = datetime.now(UTC).isoformat()
    verdict = check_canary(
        rollout_file,
        store,
        traffic,
        feedback,
        CanaryParams.model_validate(as_dict(canary_analysis)),
        apply=params.apply_canary_verdict,
        latency_budget_ms=spec_from_mapping(problem).serving.latency_budget_ms,
    )
    if verdict is None or canary is None:
        return {"generated_at": at, "decision": None, "reasons": [f"{rollout_file} runs no canary"]}
    # the run it judged: the exporter serves the verdict only while that run goes on
    return {"generated_at": at, "canary_started": canary.started, **verdict}


def _no_verdict(rollout_file: Path, what: str) -> dict[str, Any]:
    canary = read_rollout(rollout_file).canary
    if canary is None:
        return {"decision": None, "reasons": [f"{rollout_file} runs no canary"]}
    reason = (
        f"canary {canary.tag}: no automatic verdict for {what}; then run `mlsd rollout promote` or "
        "`mlsd rollout rollback`"
    )
    return {"canary_tag": canary.tag, "decision": "keep_collecting", "reasons": [reason], "applied": False}


def create_pipeline() -> Pipeline:
    return pipeline(
        [
            node(load_traffic, "params:serving", ["traffic", "feedback"], name="load_traffic"),
            node(
                reference_sample,
                ["params:problem", "params:monitoring", "params:registry", "training_set"],
                "drift_reference",
                name="reference_sample",
            ),
            node(
                monitor,
                [
                    "params:problem",
                    "params:monitoring",
                    "params:registry",
                    "drift_reference",
                    "traffic",
                    "feature_tables",
                ],
                ["drift_summary", "drift_html", "retrain"],
                name="monitor",
            ),
            node(
                canary_verdict,
                [
                    "params:problem",
                    "params:monitoring",
                    "params:registry",
                    "params:serving",
                    "params:canary_analysis",
                    "traffic",
                    "feedback",
                ],
                "canary_analysis",
                name="canary_verdict",
            ),
        ]
    )
