"""Reliability claims of docs/reliability.md that need a running server, on one `bentoml serve`.

One served project for the whole module (each server start costs 15-30 s): its online store is a
private Redis reached through :class:`SlowStoreProxy`, a TCP proxy in this process that can hold
the store's replies back and counts what the server sends, so a test can make the store slow
without touching the shared Redis (``DEBUG SLEEP`` would block every client of it). Each test sets
the rollout and the proxy it needs and leaves them as it found them:

- a slow store: the request gets the defaults at ``serving.online_timeout_ms``, the failure is
  counted as a timeout, and the store is not read again for ``serving.online_retry_s``;
- a new stable pointer in the registry is served within ``serving.reload_s``, no restart;
- a shadow slower than the traffic: past ``serving.shadow_queue`` every batch is skipped and counted;
- a log disk that refuses writes: every request still answered, the lost records counted and the
  log file named in the server's log; writes resume when the disk does;
- an entity without history: the training set gets exactly the spec defaults, and the server
  scores the same vector;
- a hanging canary: every canary request answered by stable within the canary timeout, at p99.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from onnx import helper, numpy_helper

from mlsd.export import onnx_feeds, onnx_scores, session
from mlsd.features import FeatureStoreParams, materialize, open_store, training_set
from mlsd.registry import MODEL_FILE, ModelRegistry
from mlsd.serving.prediction_log import read_log
from mlsd.spec import ProblemSpec, load_spec
from tests.conftest import (
    REDIS_TEST_DB,
    REGISTRY,
    holdout_requests,
    register_variants,
    served_copy,
    short_tmp_dir,
)
from tests.server import LOG_DIR, Server, metric, post, serving, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.services]

FEAST_YAML = "feature_store.reliability.yaml"
# The served settings under test (conf/local/parameters.yml of the module's project).
ONLINE_TIMEOUT_S = 0.25
ONLINE_RETRY_S = 3.0
RELOAD_S = 0.2
LOAD_S = 3.0  # a reload that loads another model: ONNX Runtime session, on a loaded machine
SHADOW_QUEUE = 2
CANARY_TIMEOUT_MS = 20.0
CANARY_THREADS = 2  # calls cut off keep computing: one per core hogs the machine enough
# Slack for a request on a 2-core machine that other test sessions load: scheduling, HTTP, JSON.
MARGIN_S = 0.5
# The slow model's busywork per call (:func:`slow`): ~1 s on an idle core, far longer than any
# bound below, so a broken timeout or a drained queue cannot pass unseen.
SLOW_LAYERS = 50


class SlowStoreProxy:
    """A TCP proxy on a free loopback port in front of ``upstream`` (a Redis), run by an asyncio
    loop in a daemon thread of the test process.

    ``delay_s`` holds back every chunk the store sends for that long (a slow store that still
    takes connections); ``commands`` counts the chunks clients send (each store read is at least
    one).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.delay_s = 0.0
        self.commands = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-store-proxy", daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._started.set()
        self._loop.run_forever()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            store_r, store_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pump(client_r, store_w, to_store=True),
            self._pump(store_r, client_w, to_store=False),
            return_exceptions=True,
        )

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_store: bool) -> None:
        try:
            while data := await src.read(65536):
                if to_store:
                    self.commands += 1
                elif self.delay_s:
                    await asyncio.sleep(self.delay_s)
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    def close(self) -> None:
        """Stop serving, end every open connection and the loop's thread."""

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """The port of a private redis-server: the shared one is never slowed, and no other test
    session empties this one's database."""
    from tests.test_faults import PrivateRedis

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    root = short_tmp_dir()
    redis = PrivateRedis(root)
    redis.start()
    try:
        yield redis.port
    finally:
        redis.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(redis_port: int) -> Iterator[SlowStoreProxy]:
    """The private Redis behind a :class:`SlowStoreProxy`: what the server reads through."""
    store_proxy = SlowStoreProxy(("127.0.0.1", redis_port))
    try:
        yield store_proxy
    finally:
        store_proxy.close()


@pytest.fixture(scope="module")
def project(built_project: Path, redis_port: int) -> Iterator[Path]:
    """The built project served from Redis (its own Feast profile: the file registry the pipeline
    applied, the private Redis as online store, loaded here) with the settings under test."""
    root = short_tmp_dir()
    dest = served_copy(built_project, root / "p")
    shutil.rmtree(dest / LOG_DIR, ignore_errors=True)
    base = yaml.safe_load((dest / "feature_repo" / "feature_store.yaml").read_text())
    profile = {**base, "online_store": {"type": "redis", "connection_string": "${MLSD_REDIS_URL}"}}
    (dest / "feature_repo" / FEAST_YAML).write_text(yaml.safe_dump(profile))
    serving_params = {
        "reload_s": RELOAD_S,
        "online_timeout_ms": ONLINE_TIMEOUT_S * 1000,
        "online_retry_s": ONLINE_RETRY_S,
        "shadow_queue": SHADOW_QUEUE,
        "canary_threads": CANARY_THREADS,
    }
    local = {"feature_store": {"config_file": FEAST_YAML}, "serving": serving_params}
    (dest / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    (dest / "deployment" / "rollout.yaml").write_text("{}\n")
    spec = load_spec(dest / "conf" / "base" / "problem.yml")
    with pytest.MonkeyPatch.context() as env:  # Feast reads the address when it opens the store
        env.setenv("MLSD_REDIS_URL", f"127.0.0.1:{redis_port},db={REDIS_TEST_DB}")
        store = open_store(FeatureStoreParams(repo_path=dest / "feature_repo", config_file=FEAST_YAML))
        materialize(store, spec, pd.Timestamp.now(tz="UTC").to_pydatetime())
    yield dest
    shutil.rmtree(root, ignore_errors=True)


def slow(onnx_bytes: bytes, layers: int = SLOW_LAYERS) -> bytes:
    """Stable's scores after ``layers`` products of two 1024 x 1024 matrices of busywork (~2 GFLOP
    each), whatever the batch size: a model that keeps a core busy for about a second."""
    from tests.test_serving import _with_tail

    widen = numpy_helper.from_array(np.full((2, 1024), 1 / 2048, dtype=np.float32), "widen")
    square = numpy_helper.from_array(np.full((1024, 1024), 1 / 1024, dtype=np.float32), "square")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("MatMul", ["raw", "widen"], ["wide"]),
        helper.make_node("Transpose", ["wide"], ["wide_t"]),
        helper.make_node("MatMul", ["wide_t", "wide"], ["m0"]),
    ]
    nodes += [helper.make_node("MatMul", [f"m{k}", "square"], [f"m{k + 1}"]) for k in range(layers)]
    nodes += [
        helper.make_node("ReduceSum", [f"m{layers}"], ["busy"], keepdims=1),
        helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["probabilities"]),
    ]
    return _with_tail(onnx_bytes, nodes, [widen, square, zero])


@pytest.fixture(scope="module")
def tags(project: Path) -> dict[str, str]:
    """The pipeline's stable model, a second registration of it, and a slow copy of it."""
    return register_variants(project, slow=slow)


@pytest.fixture(scope="module")
def server(project: Path, proxy: SlowStoreProxy, tags: dict[str, str]) -> Iterator[Server]:
    with serving(project, env={"MLSD_REDIS_URL": f"127.0.0.1:{proxy.port},db={REDIS_TEST_DB}"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def requests_(project: Path) -> list[dict[str, Any]]:
    return holdout_requests(project, 60)


@pytest.fixture(scope="module")
def spec(project: Path) -> ProblemSpec:
    return load_spec(project / "conf" / "base" / "problem.yml")


def set_rollout(project: Path, server: Server, **rollout: Any) -> None:
    """Write the rollout file and have the server read it at once (POST /rollout)."""
    (project / "deployment" / "rollout.yaml").write_text(yaml.safe_dump(rollout))
    status, body = post(f"{server.url}/rollout", {})
    assert status == 200, body


def timed_post(server: Server, request: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One /predict: its wall time in s and its (200) answer."""
    started = time.monotonic()
    status, answer = post(f"{server.url}/predict", request)
    elapsed = time.monotonic() - started
    assert status == 200, answer
    return elapsed, dict(answer)


def test_a_slow_online_store_serves_defaults_at_the_timeout_then_is_left_alone_for_the_retry_span(
    server: Server, proxy: SlowStoreProxy, spec: ProblemSpec, requests_: list[dict[str, Any]]
) -> None:
    stored = set(spec.feature_fields())
    wait_until(lambda: timed_post(server, requests_[0])[1]["missing_features"] == [], 10, "stored features")
    timeouts = metric(server, "mlsd_online_store_errors_total", absent=0.0, kind="timeout")
    read_before = proxy.commands
    proxy.delay_s = 4 * ONLINE_TIMEOUT_S  # the fault: the store answers, slowly
    try:
        started = time.monotonic()
        elapsed, answer = timed_post(server, requests_[1])
        assert proxy.commands > read_before, "the request did not read the store"
        # cut off at the timeout (not at the store's reply, 1 s), on the defaults, counted as such
        assert ONLINE_TIMEOUT_S * 0.9 <= elapsed <= ONLINE_TIMEOUT_S + MARGIN_S, elapsed
        assert set(answer["missing_features"]) == stored, answer
        assert metric(server, "mlsd_online_store_errors_total", kind="timeout") == timeouts + 1

        # For online_retry_s the store is not asked at all; requests get the defaults at once.
        reads = proxy.commands
        answers: list[tuple[float, dict[str, Any]]] = []
        while time.monotonic() < started + ONLINE_RETRY_S - MARGIN_S:
            answers.append(timed_post(server, requests_[2 + len(answers) % 40]))
            time.sleep(0.1)  # pacing: tens of requests across the span, not thousands
        assert proxy.commands == reads, "the store was read while it was to be left alone"
        assert len(answers) >= 10
        assert all(set(a["missing_features"]) == stored for _, a in answers)
        assert np.median([s for s, _ in answers]) < ONLINE_TIMEOUT_S, "requests waited for the store"
    finally:
        proxy.delay_s = 0.0
    # Then it is tried again, by itself: the features come back without a restart.
    wait_until(
        lambda: timed_post(server, requests_[1])[1]["missing_features"] == [],
        ONLINE_RETRY_S + 10,
        "the store was not read again after online_retry_s",
    )
    assert time.monotonic() - started >= ONLINE_RETRY_S
    assert metric(server, "mlsd_online_store_errors_total", kind="timeout") == timeouts + 1


def test_a_new_stable_pointer_in_the_registry_is_served_within_reload_s_without_a_restart(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    registry = ModelRegistry(project / REGISTRY, "ad_click")
    set_rollout(project, server, stable=None)  # the stable model is the registry's pointer
    before = registry.stable()
    assert timed_post(server, requests_[0])[1]["model_tag"] == before
    new = tags["twin"] if before != tags["twin"] else tags["stable"]
    try:
        registry.promote(new, reason="reliability test: a running server follows the pointer")
        promoted = time.monotonic()
        wait_until(
            lambda: timed_post(server, requests_[0])[1]["model_tag"] == new,
            RELOAD_S + LOAD_S,
            f"the server did not serve the promoted {new} within reload_s",
        )
        took = time.monotonic() - promoted
        answers = [timed_post(server, r)[1] for r in requests_[:10]]
        assert {a["model_tag"] for a in answers} == {new}
        assert took <= RELOAD_S + LOAD_S, took
    finally:
        assert before is not None
        registry.promote(before, reason="reliability test: back")
    wait_until(lambda: timed_post(server, requests_[0])[1]["model_tag"] == before, 10, "promoted back")


def test_a_shadow_slower_than_the_traffic_skips_every_batch_past_the_queue_and_counts_it(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, shadows=[tags["slow"]])
    skipped = metric(server, "mlsd_shadow_skipped_total", absent=0.0)
    sample = [{**r, "request_id": f"shadow-queue-{i}"} for i, r in enumerate(requests_[:12])]
    try:
        burst = time.monotonic()
        answers = [timed_post(server, r) for r in sample]
        burst_s = time.monotonic() - burst
        assert {a["variant"] for _, a in answers} == {"stable"}
        # One batch is being scored and SHADOW_QUEUE - 1 wait: every batch past those is skipped.
        assert metric(server, "mlsd_shadow_skipped_total") - skipped == len(sample) - SHADOW_QUEUE
        ids = {r["request_id"] for r in sample}

        def shadowed() -> list[dict[str, Any]]:
            return [r for r in read_log(project / LOG_DIR) if not r["served"] and r["request_id"] in ids]

        done = wait_until(
            lambda: found if len(found := shadowed()) >= SHADOW_QUEUE else None,
            60,
            "the queued shadow batches",
        )
        assert [r["request_id"] for r in done] == [r["request_id"] for r in sample[:SHADOW_QUEUE]]
        # the skips were the queue's doing: the burst ended before the first shadow batch did
        assert burst_s * 1000 < min(r["latency_ms"] for r in done), (burst_s, done)
    finally:
        set_rollout(project, server)


def _worker_log_file(project: Path) -> Path:
    """The prediction-log file of the server's (one) worker."""
    (path,) = (project / LOG_DIR).glob("predictions-*.jsonl")
    return path


def test_a_log_disk_that_refuses_writes_never_fails_a_request_and_every_lost_record_is_counted(
    project: Path, server: Server, requests_: list[dict[str, Any]]
) -> None:
    # The fault: the kernel refuses every write to the worker's log file (EFBIG). The file is
    # grown (sparse) past a size limit set on the worker; its other files stay under it. A full
    # disk (ENOSPC) would need a small filesystem, which a test cannot mount without root.
    set_rollout(project, server)
    path = _worker_log_file(project)
    worker = int(path.stem.rsplit("-", 1)[1])  # predictions-<start>-<pid>.jsonl
    lost = metric(server, "mlsd_prediction_log_lost_total", absent=0.0)
    logged = metric(server, "mlsd_prediction_log_records_total", absent=0.0)
    size = path.stat().st_size
    limits = resource.prlimit(worker, resource.RLIMIT_FSIZE)
    limit = 256 * 1024 * 1024
    sample = [{**r, "request_id": f"disk-{i}"} for i, r in enumerate(requests_[:20])]
    try:
        os.truncate(path, limit + 1)
        resource.prlimit(worker, resource.RLIMIT_FSIZE, (limit, limits[1]))
        answers = [timed_post(server, r)[1] for r in sample]
        assert [a["request_id"] for a in answers] == [r["request_id"] for r in sample]
        wait_until(
            lambda: metric(server, "mlsd_prediction_log_lost_total") - lost == len(sample),
            10,
            f"{len(sample)} lost records counted",
        )
        assert metric(server, "mlsd_prediction_log_records_total", absent=0.0) == logged
        assert f"records could not be written to {path}" in server.log()
    finally:
        os.truncate(path, size)
        resource.prlimit(worker, resource.RLIMIT_FSIZE, limits)
    # The disk takes writes again: so does the log, with no restart.
    after = {**requests_[0], "request_id": "disk-after"}
    timed_post(server, after)
    wait_until(
        lambda: any(r["request_id"] == "disk-after" for r in read_log(project / LOG_DIR)),
        10,
        "the log did not write again after the disk recovered",
    )
    assert not any(r["request_id"].startswith("disk-") and r["request_id"] != "disk-after"
                   for r in read_log(project / LOG_DIR))  # fmt: skip


def test_an_entity_without_history_gets_the_spec_defaults_in_training_and_the_same_vector_served(
    project: Path, server: Server, tags: dict[str, str], spec: ProblemSpec, requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, stable=tags["stable"])
    planted = 987_654_321  # a user the generator never made: no feature rows, online or offline
    events = pd.read_parquet(project / "data" / "02_intermediate" / "events.parquet")
    # at the time of the request: the point-in-time join then reads the rows the online store holds
    now = pd.Timestamp.now(tz="UTC")
    event = events.iloc[[len(events) - 1]].assign(user_id=planted, **{spec.label.timestamp: now})
    event = event.reset_index(drop=True)
    store = open_store(FeatureStoreParams(repo_path=project / "feature_repo"))
    built, _ = training_set(store, spec, event)
    user_fields = [f for v in spec.feature_views if "user" in v.entities for f in v.fields]
    defaults = {f: _close(spec.feature_fields()[f].default) for f in user_fields}
    assert {f: _python(built.loc[0, f]) for f in user_fields} == defaults

    request = json.loads(event[list(requests_[0])].to_json(orient="records"))[0]
    _, answer = timed_post(server, {**request, "request_id": "no-history"})
    assert set(answer["missing_features"]) == set(user_fields)
    (record,) = wait_until(
        lambda: [r for r in read_log(project / LOG_DIR) if r["request_id"] == "no-history" and r["served"]],
        10,
        "the planted request's log record",
    )
    inputs = spec.model_input_schema()
    assert record["features"] == {i.name: _close(_python(built.loc[0, i.name])) for i in inputs}
    graph = (ModelRegistry(project / REGISTRY, "ad_click").get(tags["stable"]).path / MODEL_FILE).read_bytes()
    offline = onnx_scores(session(graph), onnx_feeds(inputs, built))
    assert answer["score"] == pytest.approx(float(offline[0]), abs=1e-6)


def _python(value: Any) -> Any:
    """A numpy scalar as the Python value (what JSON carries)."""
    return value.item() if isinstance(value, np.generic) else value


def _close(value: Any) -> Any:
    """A float as equal within float32's precision (the model's inputs are float32), else itself."""
    return pytest.approx(value, rel=1e-6) if isinstance(value, float) else value


def test_a_hanging_canary_is_answered_by_stable_within_its_timeout_at_p99(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    # Last in the module: the canary calls cut off keep computing in the canary pool until the
    # server stops (an ONNX Runtime call cannot be interrupted).
    set_rollout(
        project,
        server,
        stable=tags["stable"],
        canary={"tag": tags["slow"], "percent": 100},
        canary_timeout_ms=CANARY_TIMEOUT_MS,
    )
    fallbacks = metric(server, "mlsd_canary_fallbacks_total", absent=0.0, reason="timeout")
    answers = [timed_post(server, r) for r in requests_[:30]]
    p99 = float(np.percentile([s for s, _ in answers], 99))
    assert p99 <= CANARY_TIMEOUT_MS / 1000 + MARGIN_S, p99
    assert {(a["variant"], a["model_tag"]) for _, a in answers} == {("stable", tags["stable"])}
    assert metric(server, "mlsd_canary_fallbacks_total", reason="timeout") - fallbacks == 30
