"""Score requests: stored features + request context -> route -> ONNX Runtime -> log and metrics.

This is the whole hot path (its routing machinery in :class:`mlsd.serving.routing.RoutedCore`),
free of any web framework, so it is tested and benchmarked in process as well as behind
``bentoml serve``. It holds no pandas: a batch is a list of dicts in, numpy columns to ONNX
Runtime, a list of dicts out.
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
from mlsd.serving.rollout import ActiveRollout, RolloutManager, ServedModel
from mlsd.serving.routing import RoutedCore, timed
from mlsd.spec import ProblemSpec

Feeds = dict[str, np.ndarray]


def _take(feeds: Feeds, rows: list[int], n: int) -> Feeds:
    return feeds if len(rows) == n else {k: v[rows] for k, v in feeds.items()}


def _timed(model: ServedModel, feeds: Feeds) -> tuple[np.ndarray, float, float]:
    """The model's scores and its own call's wall and CPU time (ms): a canary's latency is judged
    on the CPU time, free of the routing, queueing, feature reads and thread hand-offs."""
    return timed(model.score, feeds)


def _summary(scores: np.ndarray) -> np.ndarray:
    """One number per row: the score, or the mean of a multi-label row's class scores (the
    expected share of classes that apply: what the log, the score histogram and drift watch)."""
    return scores if scores.ndim == 1 else scores.mean(axis=1)


class Scorer(RoutedCore):
    """The online scoring core of one problem: ``spec`` gives the inputs, routing key, entity
    keys and label threshold; the other arguments are :class:`RoutedCore`'s."""

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
        self.inputs = spec.model_input_schema()
        self.names = [i.name for i in self.inputs]
        self.key = spec.serving.routing_key
        self.entity_keys = list(spec.serving.entity_keys)
        self.threshold = spec.serving.label_threshold
        self.classes = spec.label.classes  # multi-label: the graph scores every class

    def _feeds(self, requests: Sequence[Mapping[str, Any]], stored: FeatureRows) -> Feeds:
        """The graph's input arrays in spec order: stored features, then request context."""
        feeds: Feeds = {}
        for item in self.inputs:
            column = stored.values.get(item.name)
            if column is None and item.vector is not None:  # one element of a request vector
                column = [r[item.vector][item.index] for r in requests]
            elif column is None:
                column = [r[item.name] for r in requests]
            dtype = object if item.dtype == "string" else np.float32
            feeds[item.name] = np.asarray(column, dtype=dtype).reshape(-1, 1)
        return feeds

    def _answer(self, row: np.ndarray, score: float) -> dict[str, Any]:
        """The task's part of a response: the label by the threshold, or a multi-label problem's
        score per class (by name) and the classes at or over the threshold."""
        if self.classes is None:
            return {"label": None if self.threshold is None else int(score >= self.threshold)}
        threshold = 0.5 if self.threshold is None else self.threshold
        return {
            "scores": {c: float(p) for c, p in zip(self.classes, row, strict=True)},
            "labels": [c for c, p in zip(self.classes, row, strict=True) if p >= threshold],
        }

    def score(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Score validated requests (dicts of the request model's fields), in order.

        Stored features the online store cannot give (down, unknown entity, expired) come as
        defaults and are named in each answer's ``missing_features``.

        Raises:
            Exception: the stable model itself fails (the server answers 500).
        """
        start = time.perf_counter()
        now = datetime.now(UTC)
        n = len(requests)
        active = self.rollout.active
        stored = self.features.read(requests, now)
        feeds = self._feeds(requests, stored)
        variants: list[str] = [active.variant(r[self.key]) for r in requests]
        fallback = [False] * n
        shape = (n,) if self.classes is None else (n, len(self.classes))
        scores = np.zeros(shape, dtype=np.float64)
        model_ms, cpu_ms = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
        calls: dict[str, float] = {}  # each model call's CPU time, by variant
        canary_rows = [i for i, v in enumerate(variants) if v == "canary"]
        if canary_rows:
            try:
                out, wall, cpu = self._run_canary(active, _timed, _take(feeds, canary_rows, n))
                scores[canary_rows], model_ms[canary_rows], cpu_ms[canary_rows] = out, wall, cpu
                calls["canary"] = cpu
            except Exception as exc:  # a canary fault never fails a request
                self._fall_back(exc, canary_rows, variants, fallback)
        stable_rows = [i for i, v in enumerate(variants) if v == "stable"]
        # Stable also scores the canary's rows, in the same call: the canary analysis compares the
        # two models on the same requests (paired), which needs far fewer requests than two arms.
        canary_rows = [i for i, v in enumerate(variants) if v == "canary"]
        counterfactual = np.full(shape, np.nan)
        try:
            out, wall, cpu = _timed(active.stable, _take(feeds, stable_rows + canary_rows, n))
        except Exception:
            metrics.ERRORS.labels("stable", "error").inc(len(stable_rows))
            raise
        scores[stable_rows], model_ms[stable_rows], cpu_ms[stable_rows] = out[: len(stable_rows)], wall, cpu
        calls["stable"] = cpu
        counterfactual[canary_rows] = out[len(stable_rows) :]
        latency_ms = (time.perf_counter() - start) * 1000
        return self._finish(
            requests,
            active,
            stored,
            feeds,
            variants,
            fallback,
            (scores, counterfactual, model_ms, cpu_ms),
            now,
            (latency_ms, calls),
        )

    def _finish(
        self,
        requests: Sequence[Mapping[str, Any]],
        active: ActiveRollout,
        stored: FeatureRows,
        feeds: Feeds,
        variants: list[str],
        fallback: list[bool],
        scored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        now: datetime,
        timing: tuple[float, dict[str, float]],
    ) -> list[dict[str, Any]]:
        """Responses, prediction-log records, metrics and shadow scoring for a scored batch
        (``scored``: the served scores, stable's scores of the canary's rows (NaN elsewhere), and
        the wall and CPU time of the model call behind each served score; ``timing``: the batch's
        latency and each model call's CPU time by variant, both ms)."""
        scores, counterfactual, model_ms, cpu_ms = scored
        latency_ms, calls = timing
        ts = now.isoformat(timespec="milliseconds")
        tags = {"stable": active.stable.tag, "canary": active.canary.tag if active.canary else ""}
        columns = {name: feeds[name][:, 0].tolist() for name in self.names}  # what the model saw
        responses = []
        summary, stable_summary = _summary(scores), _summary(counterfactual)
        for i, request in enumerate(requests):
            variant, score = variants[i], float(summary[i])
            request_id = request.get("request_id") or uuid.uuid4().hex
            response = {
                "request_id": request_id,
                "score": score,
                **self._answer(scores[i], score),
                "model_tag": tags[variant],
                "variant": variant,
                "missing_features": stored.missing[i],
            }
            responses.append(response)
            record = {
                "request_id": request_id,
                "ts": ts,
                "routing_key": request[self.key],
                "variant": variant,
                "model_tag": tags[variant],
                "served": True,
                "fallback": fallback[i],
                "score": score,
                "latency_ms": round(latency_ms, 4),
                "model_ms": round(float(model_ms[i]), 4),
                "model_cpu_ms": round(float(cpu_ms[i]), 4),
                "entities": {k: request[k] for k in self.entity_keys},
                "features": {name: columns[name][i] for name in self.names},
                "missing": stored.missing[i],
            }
            if self.classes is not None:
                record["scores"] = response["scores"]
            if variant == "canary":
                record["stable_score"] = float(stable_summary[i])
            self.log.append(record)
            metrics.SCORES.labels(variant).observe(score)
        self._count(variants, latency_ms, stored, calls)
        if active.shadows:
            self._submit_shadow(self._score_shadows, active.shadows, feeds, responses, ts)
        return responses

    def _score_shadows(
        self, shadows: tuple[ServedModel, ...], feeds: Feeds, responses: list[dict[str, Any]], ts: str
    ) -> None:
        """Score the batch with every shadow; log the scores, never return them."""
        for shadow in shadows:
            start = time.perf_counter()
            try:
                scores = shadow.score(feeds)
            except Exception:  # a shadow fault is counted, never seen by a caller
                metrics.ERRORS.labels("shadow", "error").inc(len(responses))
                continue
            latency_ms = (time.perf_counter() - start) * 1000
            diff = metrics.SHADOW_DIFF.labels(shadow.tag)
            for response, score in zip(responses, _summary(scores).tolist(), strict=True):
                if response["variant"] == "stable":
                    diff.observe(abs(score - response["score"]))
                self.log.append(
                    {
                        "request_id": response["request_id"],
                        "ts": ts,
                        "variant": "shadow",
                        "model_tag": shadow.tag,
                        "served": False,
                        "score": score,
                        "latency_ms": round(latency_ms, 4),
                    }
                )
            metrics.REQUESTS.labels("shadow").inc(len(responses))
