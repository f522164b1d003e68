"""Serving parts in process: request models, sticky routing, rollout files, the log, body limits."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mlsd.errors import ConfigError, RolloutError
from mlsd.serving import api_models
from mlsd.serving.http import BearerAuth, RequestGuard, ValidationErrors
from mlsd.serving.prediction_log import PredictionLog, read_log
from mlsd.serving.rollout import bucket, read_rollout
from mlsd.spec import load_spec
from tests.conftest import ROOT

SPEC = load_spec(Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml")
API = api_models(SPEC, max_batch=4)
GOOD = {"user_id": 1, "ad_id": 2, "category": "auto", "position": 3, "hour": 12}


def _error_fields(payload: Any, model: Any = API.request) -> set[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(json.dumps(payload) if not isinstance(payload, str) else payload)
    return {".".join(map(str, e["loc"])) for e in info.value.errors()}


def test_request_model_has_the_spec_fields_with_their_constraints() -> None:
    assert list(API.request.model_fields) == [
        "user_id",
        "ad_id",
        "category",
        "position",
        "hour",
        "request_id",
    ]
    schema = API.request.model_json_schema()
    assert schema["properties"]["position"]["minimum"] == 1
    assert schema["properties"]["position"]["maximum"] == 10
    assert "travel" in schema["properties"]["category"]["enum"]
    assert schema["additionalProperties"] is False
    assert API.request.model_validate_json(json.dumps(GOOD)).position == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"position": 11}, "position"),
        ({"hour": -1}, "hour"),
        ({"position": "3"}, "position"),
        ({"user_id": 1.5}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"category": "cars"}, "category"),
        ({"colour": "red"}, "colour"),
        ({"request_id": "has spaces"}, "request_id"),
        ({"user_id": 2**63}, "user_id"),
    ],
)
def test_bad_request_fields_are_named(change: dict[str, Any], field: str) -> None:
    assert field in _error_fields({**GOOD, **change})


def test_missing_field_and_malformed_json_are_validation_errors() -> None:
    assert "ad_id" in _error_fields({k: v for k, v in GOOD.items() if k != "ad_id"})
    assert _error_fields('{"user_id": 1,') == {""}


def test_batch_size_is_bounded_both_ways() -> None:
    assert "requests" in _error_fields({"requests": [GOOD] * 5}, API.batch_request)
    assert "requests" in _error_fields({"requests": []}, API.batch_request)
    assert "requests.1.hour" in _error_fields({"requests": [GOOD, {**GOOD, "hour": 24}]}, API.batch_request)


def test_canary_buckets_are_sticky_and_uniform() -> None:
    keys = range(20_000)
    first = [bucket(k, "salt") for k in keys]
    assert first == [bucket(k, "salt") for k in keys]
    share = sum(b < 10 for b in first) / len(first)
    assert 0.09 < share < 0.11
    assert sum(b < 10 for b in (bucket(k, "other") for k in keys)) != sum(b < 10 for b in first)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("canary: {tag: m:1, percent: 120}", "canary.percent"),
        ("canary: {tag: m:1}", "canary.percent"),
        ("stable: m:1\nshadows: [m:1]", "one part only"),
        ("stabel: m:1", "stabel"),
        ("canary_timeout_ms: 0", "canary_timeout_ms"),
        ("[unclosed", "cannot read"),
    ],
)
def test_invalid_rollout_files_are_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(text)
    with pytest.raises(RolloutError, match=named):
        read_rollout(path)


def test_prediction_log_keeps_every_record_from_many_threads(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_ms=5)

    def write(worker: int) -> None:
        for i in range(500):
            log.append({"request_id": f"{worker}-{i}", "score": i / 500})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = [r["request_id"] for r in read_log(tmp_path)]
    assert len(ids) == 4000
    assert len(set(ids)) == 4000
    assert log.written == 4000


def test_prediction_log_reader_skips_a_partial_last_line(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_ms=5)
    log.append({"request_id": "a"})
    log.close()
    with log.path.open("a") as handle:
        handle.write('{"request_id": "torn"')
    assert [r["request_id"] for r in read_log(tmp_path)] == ["a"]


def _asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/predict"
) -> tuple[int, bytes, list[dict[str, Any]]]:
    """Run one request through an ASGI app; return status, body and the messages it sent."""
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, sent


seen: list[bytes] = []


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        seen.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_request_guard_refuses_large_declared_and_chunked_bodies() -> None:
    app = RequestGuard(_echo, max_bytes=10)
    seen.clear()
    status, body, _ = _asgi(app, [(b"content-length", b"11")], [b"x" * 11])
    assert status == 413
    assert b"serving.max_body_bytes" in body
    status, _, _ = _asgi(app, [], [b"x" * 6, b"x" * 6])
    assert status == 413
    assert seen == []
    status, body, _ = _asgi(app, [], [b"x" * 4, b"y" * 4])
    assert (status, body) == (200, b"ok")
    assert b"".join(seen) == b"xxxxyyyy"
    assert _asgi(app, [(b"content-length", b"abc")], [b""])[0] == 400


def test_only_json_bodies_are_accepted() -> None:
    app = RequestGuard(_echo, max_bytes=100)
    status, body, _ = _asgi(app, [(b"content-type", b"application/x-www-form-urlencoded")], [b"a=1"])
    assert status == 415
    assert b"application/json" in body
    assert _asgi(app, [(b"content-type", b"application/json; charset=utf-8")], [b"{}"])[0] == 200


def test_bearer_auth_guards_scoring_and_rollout_but_not_health_or_metrics() -> None:
    app = BearerAuth(_echo, token="s3cret")
    for path in ("/predict", "/predict_batch", "/rollout", "/predict/"):
        status, body, sent = _asgi(app, [], [b"{}"], path)
        assert (status, path) == (401, path)
        assert b"no Authorization header" in body
        assert (b"www-authenticate", b'Bearer realm="mlsd"') in sent[0]["headers"]
    for given in (b"Bearer s3cre", b"Bearer s3cret2", b"Basic s3cret", b"s3cret"):
        status, body, _ = _asgi(app, [(b"authorization", given)], [b"{}"])
        assert (status, given) == (401, given)
        assert b"wrong bearer token" in body
    for given in (b"Bearer s3cret", b"bearer s3cret"):  # the scheme is case-insensitive (RFC 7235)
        assert _asgi(app, [(b"authorization", given)], [b"{}"])[:2] == (200, b"ok")
    for path in ("/metrics", "/readyz", "/livez"):
        assert _asgi(app, [], [b""], path)[0] == 200
    with pytest.raises(ValueError, match="non-empty token"):
        BearerAuth(_echo, token="")


def test_the_token_comes_only_from_the_variable_conf_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from mlsd.serving import load_config
    from mlsd.serving.app import ServingParams

    config = load_config(ROOT)
    assert config.params.auth_token_env is None  # the embedded profile serves without auth
    assert config.auth_token() is None
    production = load_config(ROOT, env="production")
    assert production.params.auth_token_env == "MLSD_API_TOKEN"
    monkeypatch.delenv("MLSD_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"is MLSD_API_TOKEN, but \$MLSD_API_TOKEN is not set"):
        production.auth_token()
    monkeypatch.setenv("MLSD_API_TOKEN", "t0ken")
    assert production.auth_token() == "t0ken"
    with pytest.raises(ValueError, match="auth_token_env"):
        dataclasses.replace(config, params=ServingParams(auth_token_env="not a name"))


def _answers(status: int, body: bytes, chunked: bool = False) -> Any:
    """An ASGI app that answers every request with ``status`` and ``body`` (in two parts if chunked)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        parts = [body[:5], body[5:]] if chunked else [body]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    return app


@pytest.mark.parametrize("chunked", [False, True])
def test_validation_errors_become_the_documented_string_detail_naming_each_field(chunked: bool) -> None:
    """Regression (fuzz run): BentoML's 400 carried ``detail`` as a list; its OpenAPI says string."""
    bentoml_400 = {
        "error": "2 validation errors for AdClickRequestIODescriptor",
        "detail": [
            {"type": "missing", "loc": ["user_id"], "msg": "Field required"},
            {"type": "int_type", "loc": ["requests", 0, "hour"], "msg": "Input should be a valid integer"},
        ],
    }
    app = ValidationErrors(_answers(400, json.dumps(bentoml_400).encode(), chunked))
    status, body, _ = _asgi(app, [], [b"{}"])
    answer = json.loads(body)
    assert status == 400
    assert isinstance(answer["detail"], str)
    assert answer["detail"] == "user_id: Field required; requests.0.hour: Input should be a valid integer"
    assert "user_id" in answer["error"]
    # Anything else passes through untouched: other statuses, and 400s already in the documented shape.
    for status_in, raw in (
        (200, b'{"score": 0.5}'),
        (400, b'{"error": "x", "detail": "y"}'),
        (400, b"not json"),
    ):
        assert _asgi(ValidationErrors(_answers(status_in, raw, chunked)), [], [b"{}"])[:2] == (status_in, raw)


def test_nullable_fields_are_described_the_openapi_30_way() -> None:
    """Regression (fuzz run): ``anyOf [integer, null]`` reads as plain integer in OpenAPI 3.0, so
    every ``label: null`` the server sent violated its own document."""
    spec = load_spec(ROOT / "conf" / "base" / "problem.yml")
    models = api_models(spec, max_batch=4)
    label = models.prediction.model_json_schema()["properties"]["label"]
    assert label["type"] == "integer"
    assert label["nullable"] is True
    assert "anyOf" not in label
    request_id = models.request.model_json_schema()["properties"]["request_id"]
    assert (request_id["type"], request_id["nullable"]) == ("string", True)
    assert request_id["pattern"].startswith("^")


def test_a_failing_log_disk_loses_records_counted_never_silently_and_never_blocks(tmp_path: Path) -> None:
    """The disk refuses the write (ENOSPC from /dev/full): append still returns at once, every
    lost record is counted and reported through ``on_lost``; a healthy disk loses none."""
    reported: list[int] = []
    log = PredictionLog(tmp_path, flush_ms=5, on_lost=reported.append)
    log._file.close()
    log._file = Path("/dev/full").open("ab", buffering=0)  # noqa: SIM115 - the fault: every write fails
    for i in range(25):
        log.append({"request_id": f"r{i}"})
    log.close()
    assert (log.written, log.lost, sum(reported)) == (0, 25, 25)
    assert list(read_log(tmp_path)) == []

    healthy: list[int] = []
    log = PredictionLog(tmp_path / "ok", flush_ms=5, on_lost=healthy.append)
    for i in range(25):
        log.append({"request_id": f"r{i}"})
    log.close()
    assert (log.written, log.lost, healthy) == (25, 0, [])


def test_read_log_skips_a_line_a_failed_write_tore_and_a_partial_last_line(tmp_path: Path) -> None:
    (tmp_path / "predictions-1-1.jsonl").write_text('{"request_id":"a"}\n{"reque\n{"request_id":"b"}\n{"req')
    assert [r["request_id"] for r in read_log(tmp_path)] == ["a", "b"]


# --- routing: every counter moves by exactly what a batch did -----------------------------------


def _sample(name: str, **labels: str) -> float:
    """A metric's current value in this process (0 before its first increment)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


class _Closable:
    """A stand-in for the features reader, the rollout manager and the log: counts close()."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _core(shadow_queue: int = 1000) -> Any:
    from mlsd.serving.routing import RoutedCore

    return RoutedCore(_Closable(), _Closable(), _Closable(), shadow_queue=shadow_queue)


def test_a_batch_of_n_requests_adds_exactly_n_to_the_request_counter_per_variant() -> None:
    """mlsd_requests_total counts rows, not batches; latency is one observation per variant and
    batch; each model call's CPU time is observed once; defaulted features by view and reason."""
    from mlsd.serving.online import FeatureRows

    counters = {
        "stable": ("mlsd_requests_total", {"variant": "stable"}),
        "canary": ("mlsd_requests_total", {"variant": "canary"}),
        "latency_n": ("mlsd_request_latency_seconds_count", {"variant": "stable"}),
        "latency_sum": ("mlsd_request_latency_seconds_sum", {"variant": "canary"}),
        "cpu_n": ("mlsd_model_cpu_seconds_count", {"variant": "canary"}),
        "cpu_sum": ("mlsd_model_cpu_seconds_sum", {"variant": "stable"}),
        "missing": ("mlsd_missing_features_total", {"view": "units_view", "reason": "expired"}),
    }
    before = {k: _sample(name, **labels) for k, (name, labels) in counters.items()}
    stored = FeatureRows(values={}, missing=[], reasons={("units_view", "expired"): 3})

    _core()._count(
        ["stable", "canary", "stable", "stable", "canary"], 8.0, stored, {"stable": 2.0, "canary": 4.0}
    )

    delta = {k: _sample(name, **labels) - before[k] for k, (name, labels) in counters.items()}
    assert delta == {
        "stable": 3.0,
        "canary": 2.0,
        "latency_n": 1.0,
        "latency_sum": pytest.approx(0.008),
        "cpu_n": 1.0,
        "cpu_sum": pytest.approx(0.002),
        "missing": 3.0,
    }


@pytest.mark.parametrize(
    ("error", "reason"), [(TimeoutError("slow"), "timeout"), (RuntimeError("boom"), "error")]
)
def test_a_canary_fault_sends_exactly_its_rows_to_stable_and_counts_each_row(
    error: Exception, reason: str
) -> None:
    from mlsd.serving.routing import RoutedCore

    fallbacks = ("mlsd_canary_fallbacks_total", {"reason": reason})
    errors = ("mlsd_request_errors_total", {"variant": "canary", "kind": reason})
    before = _sample(fallbacks[0], **fallbacks[1]), _sample(errors[0], **errors[1])
    variants, fallback = ["canary", "stable", "canary", "canary"], [False] * 4

    RoutedCore._fall_back(error, [0, 3], variants, fallback)

    assert variants == ["stable", "stable", "canary", "stable"]
    assert fallback == [True, False, False, True]
    assert _sample(fallbacks[0], **fallbacks[1]) - before[0] == 2.0
    assert _sample(errors[0], **errors[1]) - before[1] == 2.0


def _active(timeout_ms: float) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        canary=SimpleNamespace(tag="ad_click:v2"), config=SimpleNamespace(canary_timeout_ms=timeout_ms)
    )


def test_the_canary_call_runs_on_its_pool_and_returns_the_call_s_answer() -> None:
    core = _core()
    try:
        answer = core._run_canary(
            _active(5000), lambda model, x: (model.tag, x, threading.current_thread().name), 7
        )
    finally:
        core.close()
    assert answer[:2] == ("ad_click:v2", 7)
    assert answer[2].startswith("mlsd-canary")


def test_a_canary_call_over_its_budget_is_a_timeout_naming_the_tag_and_the_budget() -> None:
    release = threading.Event()
    core = _core()
    try:
        with pytest.raises(TimeoutError, match=r"^canary ad_click:v2 took over 30 ms$"):
            core._run_canary(_active(30), lambda model: release.wait(10))
    finally:
        release.set()
        core.close()


def test_a_full_shadow_queue_skips_and_counts_and_a_finished_shadow_frees_its_place() -> None:
    release, ran = threading.Event(), []
    core = _core(shadow_queue=1)
    skipped = _sample("mlsd_shadow_skipped_total")

    def shadow() -> None:
        release.wait(10)
        ran.append(threading.current_thread().name)

    core._submit_shadow(shadow)
    core._submit_shadow(ran.append, "never")  # the queue holds one: skipped
    assert _sample("mlsd_shadow_skipped_total") - skipped == 1.0
    release.set()
    core.close()  # waits for the shadow work and its done callback

    assert core._shadow_pending == 0
    assert len(ran) == 1
    assert ran[0].startswith("mlsd-shadow")
    assert (core.features.closed, core.rollout.closed, core.log.closed) == (1, 1, 1)


def test_routing_defaults_are_a_1000_shadow_queue_and_4_canary_threads() -> None:
    from mlsd.serving.routing import RoutedCore

    core = RoutedCore(_Closable(), _Closable(), _Closable())
    core.close()
    assert core._shadow_limit == 1000
    assert core._canary_pool._max_workers == 4
    assert core._shadow_pool._max_workers == 1


def test_timed_gives_the_answer_and_its_wall_and_cpu_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from mlsd.serving import routing

    wall, cpu = iter([10.0, 10.5]), iter([1.0, 1.25])  # the module's clocks only, read twice each
    clocks = SimpleNamespace(perf_counter=lambda: next(wall), thread_time=lambda: next(cpu))
    monkeypatch.setattr(routing, "time", clocks)

    assert routing.timed(lambda a, b: a + b, 2, 3) == (5, 500.0, 250.0)


def test_the_shadow_queue_holds_exactly_its_limit_and_passes_each_work_its_arguments() -> None:
    release, ran = threading.Event(), []
    core = _core(shadow_queue=2)
    skipped = _sample("mlsd_shadow_skipped_total")

    def shadow(batch: str) -> None:
        release.wait(10)
        ran.append(batch)

    core._submit_shadow(shadow, "first")
    core._submit_shadow(shadow, "second")  # queued behind the first: 2 pending, the limit
    core._submit_shadow(shadow, "third")
    release.set()
    core.close()
    assert _sample("mlsd_shadow_skipped_total") - skipped == 1.0
    assert ran == ["first", "second"]
