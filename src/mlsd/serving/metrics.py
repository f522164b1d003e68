"""Prometheus metrics of the scoring service, served on /metrics next to BentoML's own.

Defined once at import (prometheus_client's registry is global); BentoML's multi-process
collector picks them up in every worker.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SCORE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# A model call's own cost: tens of microseconds for a tree ensemble on one row, up to the budget.
COST_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
DIFF_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("mlsd_requests", "Scored requests (rows) by variant that answered", ["variant"])
ERRORS = Counter(
    "mlsd_request_errors",
    "Requests (rows) a variant failed to score, by kind; variant none: calls refused as the client's "
    "error (bad_request, unauthorized, too_large, unsupported_media_type, rollout_refused)",
    ["variant", "kind"],
)
LATENCY = Histogram(
    "mlsd_request_latency_seconds",
    "Time from parsed request to response, per call, by variant",
    ["variant"],
    buckets=LATENCY_BUCKETS,
)
MODEL_CPU = Histogram(
    "mlsd_model_cpu_seconds",
    "CPU time of each model call on the thread that made it, by variant (stable, canary): the model's "
    "own cost, free of waits for a core or the GIL (ONNX Runtime computes on the calling thread with "
    "serving.ort_threads 1)",
    ["variant"],
    buckets=COST_BUCKETS,
)
# The canary analysis's latency limits (canary_analysis.max_p99_ratio, min_p99_increase_share of the
# spec's serving.latency_budget_ms), served so that MlsdCanaryLatencyHigh applies the same ones.
CANARY_COST_RATIO = Gauge(
    "mlsd_canary_cost_max_ratio",
    "Canary model-call p99 CPU time / stable's above which the canary is slower "
    "(canary_analysis.max_p99_ratio)",
    multiprocess_mode="livemax",
)
CANARY_COST_INCREASE = Gauge(
    "mlsd_canary_cost_min_increase_seconds",
    "Canary model-call p99 CPU time minus stable's that is material: canary_analysis.min_p99_increase_share "
    "x the spec's serving.latency_budget_ms",
    multiprocess_mode="livemax",
)
SCORES = Histogram("mlsd_score", "Returned scores by variant", ["variant"], buckets=SCORE_BUCKETS)
MISSING = Counter(
    "mlsd_missing_features",
    "Stored features served with their default, by view and reason (unknown, expired, null, unavailable)",
    ["view", "reason"],
)
FALLBACKS = Counter("mlsd_canary_fallbacks", "Canary calls answered by stable instead", ["reason"])
SHADOW_DIFF = Histogram(
    "mlsd_shadow_disagreement", "|shadow score - stable score| per row", ["shadow"], buckets=DIFF_BUCKETS
)
SHADOW_SKIPPED = Counter("mlsd_shadow_skipped", "Shadow scorings dropped because the queue was full")
RELOADS = Counter("mlsd_rollout_reloads", "Rollout rebuilds by outcome", ["outcome"])
CANARY_PERCENT = Gauge(
    "mlsd_canary_percent", "Share of routing keys sent to the canary", multiprocess_mode="livemax"
)
LOGGED = Counter("mlsd_prediction_log_records", "Records written durably to the prediction log")
LOG_LOST = Counter(
    "mlsd_prediction_log_lost", "Prediction-log records a failed disk write lost (the requests were served)"
)
STORE_ERRORS = Counter(
    "mlsd_online_store_errors",
    "Online-store reads that failed, by kind (unavailable: no connection, timeout: too slow, error); "
    "those requests got every default",
    ["kind"],
)
LOG_BACKLOG = Gauge(
    "mlsd_prediction_log_backlog",
    "Records queued for the prediction log, not yet on disk",
    multiprocess_mode="livesum",
)
DECISIONS = Counter(
    "mlsd_answer_decisions",
    "Answer-or-escalate decisions of served requests (answer-or-escalate problems), by variant",
    ["variant", "decision"],
)
