"""Recommend for requests of a retrieval problem: user id -> route -> ONNX (lookup, MatMul, TopK);
for text retrieval, query text -> route (by user id) -> ONNX (TF-IDF, MatMul, TopK, rank).

The retrieval counterpart of :class:`mlsd.serving.scorer.Scorer`, with the same constructor, the
same routing (sticky canary by the routing key, a canary fault or timeout falls back to stable,
shadows off the response path) and the same prediction log, whose records carry the ranked
``items`` and ``scores`` (``score`` is the top score, what prediction drift watches). The graph
takes only its one input (the user id, or the query text of a text retrieval problem); the
stored features and the request context are read to be logged (drift monitoring), never fed.
A request may ask for fewer than ``serving.top_k`` items with ``k``. An answer-or-escalate
problem's graph also gives ``answer_p``; the response then says whether to answer with the top item.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlsd.serving import metrics
from mlsd.serving.online import FeatureRows, OnlineFeatures
from mlsd.serving.prediction_log import PredictionLog
from mlsd.serving.rollout import ActiveRollout, RolloutManager, ServedModel, served_outputs
from mlsd.spec import ProblemSpec

Ranked = list[np.ndarray]  # items int64 [N, k], scores float32 [N, k] (, answer_p float32 [N])


def _rank(model: ServedModel, key: str, values: np.ndarray, outputs: list[str]) -> tuple[Ranked, float]:
    """The model's ``outputs`` for each input value (its graph input is ``key``), and its call's
    time (ms)."""
    start = time.perf_counter()
    ranked = model.session.run(outputs, {key: values.reshape(-1, 1)})
    return [np.asarray(out) for out in ranked], (time.perf_counter() - start) * 1000


def _decision(ranked: Ranked, j: int, answer_at: float | None) -> dict[str, Any]:
    """Row ``j``'s answer-or-escalate fields (none without an escalation head)."""
    if answer_at is None:
        return {}
    p = float(ranked[2][j])
    return {"answer": p >= answer_at, "answer_p": p}


class Recommender:
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
        self.features, self.rollout, self.log = features, rollout, log
        self.key = spec.serving.routing_key
        (graph_input,) = spec.model_input_schema()
        self.input, self.dtype = graph_input.name, object if graph_input.dtype == "string" else np.int64
        self.top_k = spec.serving.top_k or 10
        self.outputs = list(served_outputs(spec))
        escalation = spec.text_retrieval.escalation if spec.text_retrieval else None
        self.answer_at = None if escalation is None else escalation.answer_at
        self.names = [n for fv in spec.feature_views if fv.online for n in fv.fields]
        self.context = list(spec.serving.context)
        self._canary_pool = ThreadPoolExecutor(canary_threads, thread_name_prefix="mlsd-canary")
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="mlsd-shadow")
        self._shadow_limit, self._shadow_pending = shadow_queue, 0
        self._shadow_lock = threading.Lock()

    def _canary(self, active: ActiveRollout, values: np.ndarray) -> tuple[Ranked, float]:
        assert active.canary is not None
        future = self._canary_pool.submit(_rank, active.canary, self.input, values, self.outputs)
        try:
            return future.result(timeout=active.config.canary_timeout_ms / 1000)
        except FutureTimeout as exc:
            raise TimeoutError(
                f"canary {active.canary.tag} took over {active.config.canary_timeout_ms} ms"
            ) from exc

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
        variants = [active.variant(int(i)) for i in ids]
        fallback = [False] * len(ids)
        results: dict[str, tuple[list[int], Ranked, float]] = {}
        canary_rows = [i for i, v in enumerate(variants) if v == "canary"]
        if canary_rows:
            try:
                results["canary"] = (canary_rows, *self._canary(active, values[canary_rows]))
            except Exception as exc:  # a canary fault never fails a request
                reason = "timeout" if isinstance(exc, TimeoutError) else "error"
                metrics.FALLBACKS.labels(reason).inc(len(canary_rows))
                metrics.ERRORS.labels("canary", reason).inc(len(canary_rows))
                for i in canary_rows:
                    variants[i], fallback[i] = "stable", True
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
        for variant, (rows, ranked, model_ms) in results.items():
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
                    fallback=fallback[i], latency_ms=round(latency_ms, 4), model_ms=round(model_ms, 4)
                )
                self.log.append(record)
                metrics.SCORES.labels(variant).observe(float(scores[j, 0]))
                if "answer" in responses[i]:
                    decision = "answer" if responses[i]["answer"] else "escalate"
                    metrics.DECISIONS.labels(variant, decision).inc()
        for variant in set(variants):
            metrics.REQUESTS.labels(variant).inc(variants.count(variant))
            metrics.LATENCY.labels(variant).observe(latency_ms / 1000)
        for (view, reason), count in stored.reasons.items():
            metrics.MISSING.labels(view, reason).inc(count)
        if active.shadows:
            self._shadow(active, values, responses, ts)
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

    def _shadow(
        self, active: ActiveRollout, values: np.ndarray, responses: list[dict[str, Any]], ts: str
    ) -> None:
        """Rank the batch with every shadow in the background; log the lists, never return them."""
        with self._shadow_lock:
            if self._shadow_pending >= self._shadow_limit:
                metrics.SHADOW_SKIPPED.inc()
                return
            self._shadow_pending += 1
        future = self._shadow_pool.submit(self._rank_shadows, active.shadows, values, responses, ts)
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, _: Any) -> None:
        with self._shadow_lock:
            self._shadow_pending -= 1

    def _rank_shadows(
        self, shadows: tuple[ServedModel, ...], values: np.ndarray, responses: list[dict[str, Any]], ts: str
    ) -> None:
        for shadow in shadows:
            try:
                ranked, model_ms = _rank(shadow, self.input, values, self.outputs)
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

    def close(self) -> None:
        """Finish shadow work, stop watching the rollout and flush the prediction log."""
        self.rollout.close()
        self._shadow_pool.shutdown(wait=True)
        self._canary_pool.shutdown(wait=False, cancel_futures=True)
        self.features.close()
        self.log.close()
