"""Recommend for requests of a retrieval problem: user id -> route -> ONNX (lookup, MatMul, TopK);
for text retrieval, query text -> route (by user id) -> ONNX (TF-IDF, MatMul, TopK, rank).

The retrieval counterpart of :class:`mlsd.serving.scorer.Scorer`: the same constructor and the
same routing, both from :class:`mlsd.serving.routing.RoutedCore` (sticky canary by the routing
key, a canary fault or timeout falls back to stable, shadows off the response path), and the
same prediction log, whose records carry the ranked
``items`` and ``scores`` (``score`` is the top score, what prediction drift watches). The graph
takes only its one input (the user id, or the query text of a text retrieval problem); the
stored features and the request context are read to be logged (drift monitoring), never fed.
A request may ask for fewer than ``serving.top_k`` items with ``k``. An answer-or-escalate
problem's graph also gives ``answer_p``; the response then says whether to answer with the top item.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlsd.serving import metrics
from mlsd.serving.online import FeatureRows, OnlineFeatures
from mlsd.serving.prediction_log import PredictionLog
from mlsd.serving.rollout import RolloutManager, ServedModel, served_outputs
from mlsd.serving.routing import RoutedCore, timed
from mlsd.spec import ProblemSpec

Ranked = list[np.ndarray]  # items int64 [N, k], scores float32 [N, k] (, answer_p float32 [N])


def _rank(
    model: ServedModel, key: str, values: np.ndarray, outputs: list[str]
) -> tuple[Ranked, float, float]:
    """The model's ``outputs`` for each input value (its graph input is ``key``), and its call's
    wall and CPU time (ms; see :func:`mlsd.serving.routing.timed`)."""

    def run() -> Ranked:
        return [np.asarray(out) for out in model.session.run(outputs, {key: values.reshape(-1, 1)})]

    return timed(run)


def _decision(ranked: Ranked, j: int, answer_at: float | None) -> dict[str, Any]:
    """Row ``j``'s answer-or-escalate fields (none without an escalation head)."""
    if answer_at is None:
        return {}
    p = float(ranked[2][j])
    return {"answer": p >= answer_at, "answer_p": p}


class Recommender(RoutedCore):
    """The online ranking core of one retrieval problem (arguments as for ``Scorer``)."""

    def __init__(
        self,
        spec: ProblemSpec,
        features: OnlineFeatures,
        rollout: RolloutManager,
        log: PredictionLog,
        shadow_queue: int = 1000,
        canary_threads: int = 4,
    ) -> None:
        super().__init__(features, rollout, log, shadow_queue, canary_threads)
        self.key = spec.serving.routing_key
        (graph_input,) = spec.model_input_schema()
        self.input, self.dtype = graph_input.name, object if graph_input.dtype == "string" else np.int64
        self.top_k = spec.serving.top_k or 10
        self.outputs = list(served_outputs(spec))
        escalation = spec.text_retrieval.escalation if spec.text_retrieval else None
        self.answer_at = None if escalation is None else escalation.answer_at
        self.names = [n for fv in spec.feature_views if fv.online for n in fv.fields]
        self.context = list(spec.serving.context)

    def score(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Ranked items for validated requests, in order.

        Stored features the online store cannot give (down, unknown entity, expired) come as
        defaults and are named in each answer's ``missing_features``.

        Raises:
            Exception: the stable model itself fails (the server answers 500).
        """
        start, now = time.perf_counter(), datetime.now(UTC)
        active = self.rollout.active
        stored = self.features.read(requests, now)
        ids = np.array([r[self.key] for r in requests], dtype=np.int64)
        values = np.array([r[self.input] for r in requests], dtype=self.dtype)
        variants: list[str] = [active.variant(int(i)) for i in ids]
        fallback = [False] * len(ids)
        results: dict[str, tuple[list[int], Ranked, float, float]] = {}
        canary_rows = [i for i, v in enumerate(variants) if v == "canary"]
        if canary_rows:
            try:
                canary = self._run_canary(active, _rank, self.input, values[canary_rows], self.outputs)
                results["canary"] = (canary_rows, *canary)
            except Exception as exc:  # a canary fault never fails a request
                self._fall_back(exc, canary_rows, variants, fallback)
        stable_rows = [i for i, v in enumerate(variants) if v == "stable"]
        if stable_rows:
            try:
                results["stable"] = (
                    stable_rows,
                    *_rank(active.stable, self.input, values[stable_rows], self.outputs),
                )
            except Exception:
                metrics.ERRORS.labels("stable", "error").inc(len(stable_rows))
                raise
        latency_ms = (time.perf_counter() - start) * 1000
        tags = {"stable": active.stable.tag, "canary": active.canary.tag if active.canary else ""}
        responses: list[dict[str, Any]] = [{} for _ in requests]
        ts = now.isoformat(timespec="milliseconds")
        for variant, (rows, ranked, model_ms, cpu_ms) in results.items():
            items, scores = ranked[0], ranked[1]
            for j, i in enumerate(rows):
                k = min(int(requests[i].get("k") or self.top_k), items.shape[1])
                responses[i] = {
                    "request_id": requests[i].get("request_id") or uuid.uuid4().hex,
                    "items": items[j, :k].tolist(),
                    "scores": scores[j, :k].astype(float).tolist(),
                    **_decision(ranked, j, self.answer_at),
                    "model_tag": tags[variant],
                    "variant": variant,
                    "missing_features": stored.missing[i],
                }
                record = self._record(responses[i], requests[i], stored, i, ts)
                record.update(
                    fallback=fallback[i],
                    latency_ms=round(latency_ms, 4),
                    model_ms=round(model_ms, 4),
                    model_cpu_ms=round(cpu_ms, 4),
                )
                self.log.append(record)
                metrics.SCORES.labels(variant).observe(float(scores[j, 0]))
                if "answer" in responses[i]:
                    decision = "answer" if responses[i]["answer"] else "escalate"
                    metrics.DECISIONS.labels(variant, decision).inc()
        self._count(variants, latency_ms, stored, {v: result[3] for v, result in results.items()})
        if active.shadows:
            self._submit_shadow(self._rank_shadows, active.shadows, values, responses, ts)
        return responses

    def _record(
        self, response: dict[str, Any], request: Mapping[str, Any], stored: FeatureRows, i: int, ts: str
    ) -> dict[str, Any]:
        """The prediction-log record of one response: the list, the features the user had and the
        request context (a text retrieval query)."""
        key = request[self.key]
        features = {name: stored.values[name][i] for name in self.names}
        features.update({name: request.get(name) for name in self.context})
        return {
            "request_id": response["request_id"],
            "ts": ts,
            "routing_key": key,
            "variant": response["variant"],
            "model_tag": response["model_tag"],
            "served": True,
            "score": response["scores"][0] if response["scores"] else None,
            "items": response["items"],
            "scores": response["scores"],
            **{name: response[name] for name in ("answer", "answer_p") if name in response},
            "entities": {self.key: key},
            "features": features,
            "missing": stored.missing[i],
        }

    def _rank_shadows(
        self, shadows: tuple[ServedModel, ...], values: np.ndarray, responses: list[dict[str, Any]], ts: str
    ) -> None:
        for shadow in shadows:
            try:
                ranked, model_ms, _ = _rank(shadow, self.input, values, self.outputs)
            except Exception:  # a shadow fault is counted, never seen by a caller
                metrics.ERRORS.labels("shadow", "error").inc(len(responses))
                continue
            for j, response in enumerate(responses):
                row_scores = ranked[1][j].tolist()
                self.log.append(
                    {
                        "request_id": response["request_id"],
                        "ts": ts,
                        "variant": "shadow",
                        "model_tag": shadow.tag,
                        "served": False,
                        "score": row_scores[0],
                        "items": ranked[0][j].tolist(),
                        "scores": row_scores,
                        **_decision(ranked, j, self.answer_at),
                        "latency_ms": round(model_ms, 4),
                    }
                )
            metrics.REQUESTS.labels("shadow").inc(len(responses))
