"""What both online cores share: the canary call with its time budget, the fallback of a failed
canary to stable, the bounded shadow queue, the per-batch metrics and the shutdown.

:class:`mlsd.serving.scorer.Scorer` (a score per request) and
:class:`mlsd.serving.recommender.Recommender` (a ranked list) subclass :class:`RoutedCore` and say
only how a model is called and what a response and its log record hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from mlsd.serving import metrics
from mlsd.serving.online import FeatureRows, OnlineFeatures
from mlsd.serving.prediction_log import PredictionLog
from mlsd.serving.rollout import ActiveRollout, RolloutManager

T = TypeVar("T")


def timed(call: Callable[..., T], *args: Any) -> tuple[T, float, float]:
    """``call(*args)``, its wall time and its CPU time on this thread, in ms.

    The CPU time is the model's own cost: with ``serving.ort_threads`` 1 ONNX Runtime computes on
    the calling thread and releases the GIL, so waiting for a core (a loaded machine) or for the
    GIL (a canary's pool thread) is in the wall time only. Stable and canary are measured alike,
    whichever thread runs them. With more ORT threads it leaves out the work of ORT's own pool.
    """
    wall, cpu = time.perf_counter(), time.thread_time()
    out = call(*args)
    return out, (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


class RoutedCore:
    """Routing machinery of an online core.

    Args:
        features: the online feature reader.
        rollout: which models serve.
        log: where every answered request is recorded.
        shadow_queue: most shadow batches waiting at once; more are skipped and counted.
        canary_threads: canary calls at once (each runs in a pool so a timeout can cut it off).
    """

    def __init__(
        self,
        features: OnlineFeatures,
        rollout: RolloutManager,
        log: PredictionLog,
        shadow_queue: int = 1000,
        canary_threads: int = 4,
    ) -> None:
        self.features, self.rollout, self.log = features, rollout, log
        self._canary_pool = ThreadPoolExecutor(canary_threads, thread_name_prefix="mlsd-canary")
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="mlsd-shadow")
        self._shadow_limit, self._shadow_pending = shadow_queue, 0
        self._shadow_lock = threading.Lock()

    def _run_canary(self, active: ActiveRollout, call: Callable[..., T], *args: Any) -> T:
        """``call(canary, *args)`` within the rollout's canary budget.

        Raises:
            TimeoutError: past ``canary_timeout_ms`` (naming the tag); or whatever the call raised.
        """
        assert active.canary is not None
        future = self._canary_pool.submit(call, active.canary, *args)
        try:
            return future.result(timeout=active.config.canary_timeout_ms / 1000)
        except FutureTimeout as exc:
            raise TimeoutError(
                f"canary {active.canary.tag} took over {active.config.canary_timeout_ms} ms"
            ) from exc

    @staticmethod
    def _fall_back(exc: Exception, rows: list[int], variants: list[str], fallback: list[bool]) -> None:
        """A canary fault never fails a request: count it, and send its rows to stable."""
        reason = "timeout" if isinstance(exc, TimeoutError) else "error"
        metrics.FALLBACKS.labels(reason).inc(len(rows))
        metrics.ERRORS.labels("canary", reason).inc(len(rows))
        for i in rows:
            variants[i], fallback[i] = "stable", True

    @staticmethod
    def _count(variants: list[str], latency_ms: float, stored: FeatureRows, cpu_ms: dict[str, float]) -> None:
        """A batch's request, latency and defaulted-feature metrics, and the CPU time of each
        model call it made (``cpu_ms``: by variant)."""
        for variant, ms in cpu_ms.items():
            metrics.MODEL_CPU.labels(variant).observe(ms / 1000)
        for variant in set(variants):
            metrics.REQUESTS.labels(variant).inc(variants.count(variant))
            metrics.LATENCY.labels(variant).observe(latency_ms / 1000)
        for (view, reason), count in stored.reasons.items():
            metrics.MISSING.labels(view, reason).inc(count)

    def _submit_shadow(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` (the shadows of one batch) in the background, unless the queue is full
        (then it is skipped and counted): shadows never slow the response path."""
        with self._shadow_lock:
            if self._shadow_pending >= self._shadow_limit:
                metrics.SHADOW_SKIPPED.inc()
                return
            self._shadow_pending += 1
        future: Future[None] = self._shadow_pool.submit(work, *args)
        future.add_done_callback(self._shadow_done)

    def _shadow_done(self, _: Future[None]) -> None:
        with self._shadow_lock:
            self._shadow_pending -= 1

    def close(self) -> None:
        """Finish shadow work, stop watching the rollout and flush the prediction log."""
        self.rollout.close()
        self._shadow_pool.shutdown(wait=True)
        self._canary_pool.shutdown(wait=False, cancel_futures=True)
        self.features.close()
        self.log.close()
