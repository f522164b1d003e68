"""The scoring service for real: `bentoml serve deployment` on a free port, models from the pipeline.

One server serves the module's tests; each test sets the rollout it needs through
deployment/rollout.yaml and POST /rollout. Extra models (a twin of stable, a shadow that halves
scores, a canary that crashes at run time) are registered next to the pipeline's model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from onnx import helper, numpy_helper

from mlsd.export import onnx_feeds, onnx_scores, session
from mlsd.features import FeatureStoreParams, fill_defaults, online_features, open_store
from mlsd.registry import MODEL_FILE, ModelRegistry
from mlsd.serving.online import OnlineFeatures
from mlsd.serving.prediction_log import read_log
from mlsd.spec import load_spec
from tests.conftest import (
    REGISTRY,
    ROOT,
    holdout_requests,
    mlsd_cli,
    register_variants,
    served_copy,
    short_tmp_dir,
)
from tests.server import LOG_DIR, Server, get, metric, post, serving, wait_until
from tests.test_export import renamed


def _with_tail(onnx_bytes: bytes, nodes: list[Any], initializers: list[Any]) -> bytes:
    """The graph with ``probabilities`` renamed to ``raw`` and ``nodes`` computing it from ``raw``."""
    model = onnx.load_from_string(onnx_bytes)
    for node in model.graph.node:
        for k, name in enumerate(node.output):
            if name == "probabilities":
                node.output[k] = "raw"
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    return bytes(model.SerializeToString())


def halved(onnx_bytes: bytes) -> bytes:
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    return _with_tail(onnx_bytes, [helper.make_node("Mul", ["raw", "half"], ["probabilities"])], [half])


def crashing(onnx_bytes: bytes) -> bytes:
    """Loads fine, fails on every call: gathers column 5 of a 2-column tensor."""
    index = numpy_helper.from_array(np.array([5], dtype=np.int64), "five")
    return _with_tail(
        onnx_bytes, [helper.make_node("Gather", ["raw", "five"], ["probabilities"], axis=1)], [index]
    )


def slow(onnx_bytes: bytes, layers: int = 150) -> bytes:
    """The same scores after ~150M multiply-adds per row of busywork (a canary that is too slow)."""
    widen = numpy_helper.from_array(np.full((2, 1024), 1 / 2048, dtype=np.float32), "widen")
    square = numpy_helper.from_array(np.full((1024, 1024), 1 / 1024, dtype=np.float32), "square")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [helper.make_node("MatMul", ["raw", "widen"], ["h0"])]
    nodes += [helper.make_node("MatMul", [f"h{k}", "square"], [f"h{k + 1}"]) for k in range(layers)]
    nodes += [
        helper.make_node("ReduceSum", [f"h{layers}"], ["busy"], keepdims=1),
        helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["probabilities"]),
    ]
    return _with_tail(onnx_bytes, nodes, [widen, square, zero])


@pytest.fixture(scope="module")
def project(built_project: Path) -> Iterator[Path]:
    root = short_tmp_dir()
    dest = served_copy(built_project, root / "p")
    (dest / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({"serving": {"reload_s": 0.2}}))
    yield dest
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tags(project: Path) -> dict[str, str]:
    return register_variants(project, halved=halved, crashing=crashing, slow=slow)


@pytest.fixture(scope="module")
def server(project: Path, tags: dict[str, str]) -> Iterator[Server]:
    with serving(project) as srv:
        yield srv


@pytest.fixture(scope="module")
def requests_(project: Path) -> list[dict[str, Any]]:
    """Distinct requests for users, ads and contexts the pipeline has seen."""
    return holdout_requests(project, 200)


def set_rollout(project: Path, server: Server, **rollout: Any) -> dict[str, Any]:
    (project / "deployment" / "rollout.yaml").write_text(yaml.safe_dump(rollout))
    status, body = post(f"{server.url}/rollout", {})
    assert status == 200, body
    return dict(body)


def batch(server: Server, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    status, body = post(f"{server.url}/predict_batch", {"requests": requests})
    assert status == 200, body
    return list(body["predictions"])


def logged(
    project: Path, wait_for: set[str], served: bool = True, timeout: float = 10
) -> dict[str, dict[str, Any]]:
    """Prediction-log records by request id, waiting until ``wait_for`` ids are on disk."""
    deadline = time.monotonic() + timeout
    while True:
        records = {r["request_id"]: r for r in read_log(project / LOG_DIR) if r["served"] == served}
        if wait_for <= set(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_scores_equal_offline_onnx_scoring_of_the_same_features(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, stable=None)
    sample = [{**r, "request_id": f"parity-{i}"} for i, r in enumerate(requests_[:50])]
    answers = batch(server, sample)
    # Offline: Feast's own get_online_features, the spec defaults, the registered graph.
    spec = load_spec(project / "conf" / "base" / "problem.yml")
    store = open_store(FeatureStoreParams(repo_path=project / "feature_repo"))
    stored = online_features(store, spec, [{k: r[k] for k in spec.serving.entity_keys} for r in sample])
    frame, _ = fill_defaults(spec, pd.DataFrame(stored))
    for name in spec.serving.context:
        frame[name] = [r[name] for r in sample]
    inputs = spec.model_input_schema()
    graph = (ModelRegistry(project / REGISTRY, "ad_click").get(tags["stable"]).path / MODEL_FILE).read_bytes()
    offline = onnx_scores(session(graph), onnx_feeds(inputs, frame))
    served = np.array([a["score"] for a in answers])
    assert np.max(np.abs(served - offline)) < 1e-6
    assert {a["model_tag"] for a in answers} == {tags["stable"]}
    assert [a["request_id"] for a in answers] == [r["request_id"] for r in sample]
    records = logged(project, {r["request_id"] for r in sample})
    for i, request in enumerate(sample):
        record = records[request["request_id"]]
        assert record["score"] == answers[i]["score"]
        assert record["entities"] == {k: request[k] for k in spec.serving.entity_keys}
        np.testing.assert_allclose(
            [record["features"][i.name] for i in inputs if i.dtype == "float32"],
            frame.iloc[i][[i.name for i in inputs if i.dtype == "float32"]].astype(np.float32),
            rtol=1e-6,
        )


def test_canary_share_is_the_configured_percent_and_sticky(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, canary={"tag": tags["twin"], "percent": 20})
    template = requests_[0]
    users = [{**template, "user_id": 100_000 + u} for u in range(2000)]
    answers = [a for i in range(0, 2000, 200) for a in batch(server, users[i : i + 200])]
    canary = [a["variant"] == "canary" for a in answers]
    assert abs(sum(canary) / 2000 - 0.20) < 0.035
    assert {a["model_tag"] for a in answers if a["variant"] == "canary"} == {tags["twin"]}
    assert {a["model_tag"] for a in answers if a["variant"] == "stable"} == {tags["stable"]}
    for user, first in list(zip(users, answers, strict=True))[:60]:
        status, again = post(f"{server.url}/predict", {**user, "hour": (user["hour"] + 5) % 24})
        assert status == 200
        assert again["variant"] == first["variant"]


def test_shadow_is_scored_and_logged_but_never_returned(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, shadows=[tags["halved"]])
    sample = [{**r, "request_id": f"shadow-{i}"} for i, r in enumerate(requests_[:40])]
    answers = batch(server, sample[:20]) + [post(f"{server.url}/predict", r)[1] for r in sample[20:]]
    assert {a["model_tag"] for a in answers} == {tags["stable"]}
    assert all("halved" not in json.dumps(a) for a in answers)
    ids = {r["request_id"] for r in sample}
    shadows = logged(project, ids, served=False)
    assert ids <= set(shadows)
    for answer in answers:
        record = shadows[answer["request_id"]]
        assert record["model_tag"] == tags["halved"]
        assert record["score"] == pytest.approx(answer["score"] / 2, rel=1e-6)
    assert metric(server, "mlsd_shadow_disagreement_count", shadow=tags["halved"]) >= 40


def test_crashing_or_slow_canary_falls_back_to_stable(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, canary={"tag": tags["crashing"], "percent": 100})
    before = (
        metric(server, "mlsd_canary_fallbacks_total", reason="error")
        if 'reason="error"' in get(f"{server.url}/metrics")[1]
        else 0.0
    )
    sample = [{**r, "request_id": f"crash-{i}"} for i, r in enumerate(requests_[:10])]
    answers = [post(f"{server.url}/predict", r) for r in sample]
    assert all(status == 200 for status, _ in answers)
    assert {(a["variant"], a["model_tag"]) for _, a in answers} == {("stable", tags["stable"])}
    assert metric(server, "mlsd_canary_fallbacks_total", reason="error") - before == 10
    records = logged(project, {r["request_id"] for r in sample})
    assert all(records[r["request_id"]]["fallback"] for r in sample)

    set_rollout(project, server, canary={"tag": tags["slow"], "percent": 100}, canary_timeout_ms=1)
    status, answer = post(f"{server.url}/predict", requests_[0])
    assert (status, answer["variant"]) == (200, "stable")
    assert metric(server, "mlsd_canary_fallbacks_total", reason="timeout") >= 1


def test_unknown_entities_get_defaults_and_are_flagged(
    project: Path, server: Server, requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server)
    known = requests_[0]
    status, answer = post(f"{server.url}/predict", {**known, "user_id": 987_654_321})
    assert status == 200
    spec = load_spec(project / "conf" / "base" / "problem.yml")
    user_views = [v for v in spec.feature_views if "user" in v.entities]
    expected = {f for v in user_views for f in v.fields}
    assert set(answer["missing_features"]) == expected
    status, full = post(f"{server.url}/predict", known)
    assert full["missing_features"] == []
    assert metric(server, "mlsd_missing_features_total", view="user_profile", reason="unknown") >= 3


def test_expired_features_read_as_missing(project: Path, requests_: list[dict[str, Any]]) -> None:
    spec = load_spec(project / "conf" / "base" / "problem.yml")
    reader = OnlineFeatures(open_store(FeatureStoreParams(repo_path=project / "feature_repo")), spec)
    rows = requests_[:5]
    fresh = reader.read(rows)
    assert fresh.missing == [[]] * 5
    later = reader.read(rows, now=datetime.now(UTC) + timedelta(days=3))
    expiring = {f for v in spec.feature_views if v.ttl > timedelta(0) for f in v.fields}
    assert all(set(m) == expiring for m in later.missing)
    assert later.reasons[("user_ctr", "expired")] == 5 * 4
    defaults = spec.feature_fields()
    assert later.values["user_ctr_7d"] == [defaults["user_ctr_7d"].default] * 5
    assert later.values["age"] == fresh.values["age"]  # ttl 0: never expires


BAD_INPUTS = [
    ("malformed json", b'{"user_id": 1,', 400, "json"),
    ("missing field", {"user_id": 1, "ad_id": 2, "category": "auto", "position": 3}, 400, "hour"),
    (
        "wrong type",
        {"user_id": "one", "ad_id": 2, "category": "auto", "position": 3, "hour": 1},
        400,
        "user_id",
    ),
    (
        "out of range",
        {"user_id": 1, "ad_id": 2, "category": "auto", "position": 11, "hour": 1},
        400,
        "position",
    ),
    (
        "unknown category",
        {"user_id": 1, "ad_id": 2, "category": "cars", "position": 3, "hour": 1},
        400,
        "category",
    ),
    (
        "unknown field",
        {"user_id": 1, "ad_id": 2, "category": "auto", "position": 3, "hour": 1, "x": 1},
        400,
        "x",
    ),
    ("oversized body", b" " * 2_000_000, 413, "max_body_bytes"),
]


@pytest.mark.parametrize(("case", "body", "status", "named"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_naming_the_problem(
    server: Server, case: str, body: Any, status: int, named: str
) -> None:
    got, answer = post(f"{server.url}/predict", body)
    assert got == status, answer
    assert named in json.dumps(answer).lower()


def test_bad_batches_and_media_types_are_4xx_and_the_server_keeps_serving(
    server: Server, requests_: list[dict[str, Any]]
) -> None:
    status, answer = post(f"{server.url}/predict_batch", {"requests": requests_[:1] * 257})
    assert status == 400
    assert "requests" in json.dumps(answer)
    status, answer = post(f"{server.url}/predict_batch", {"requests": []})
    assert status == 400
    assert "requests" in json.dumps(answer)
    status, answer = post(
        f"{server.url}/predict", "user_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415
    assert get(f"{server.url}/predict")[0] == 405
    assert post(f"{server.url}/predict", requests_[0])[0] == 200


def test_metrics_have_per_variant_series(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server, canary={"tag": tags["twin"], "percent": 50}, shadows=[tags["halved"]])
    batch(server, requests_[:100])
    for variant in ("stable", "canary", "shadow"):
        assert metric(server, "mlsd_requests_total", variant=variant) > 0
    for variant in ("stable", "canary"):
        assert metric(server, "mlsd_request_latency_seconds_count", variant=variant) > 0
        assert metric(server, "mlsd_score_count", variant=variant) > 0
    assert metric(server, "mlsd_canary_percent") == 50
    assert metric(server, "mlsd_prediction_log_records_total") > 0
    for variant in ("stable", "canary"):  # each model call's CPU time
        assert metric(server, "mlsd_model_cpu_seconds_count", variant=variant) > 0
    # The canary analysis's latency limits, for MlsdCanaryLatencyHigh: conf/base's 1.5x and 5% of
    # ad_click's 150 ms budget.
    assert metric(server, "mlsd_canary_cost_max_ratio") == 1.5
    assert metric(server, "mlsd_canary_cost_min_increase_seconds") == pytest.approx(0.0075)
    assert metric(server, "bentoml_service_request_total", endpoint="/predict_batch") > 0


def test_each_models_own_cost_is_the_cpu_time_of_its_call_for_both_arms(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    """``model_cpu_ms`` is the CPU time of the model's call on the thread that made it: a twin of
    stable costs what stable costs although its call runs in the canary pool (stable's on the
    request's thread), and the busywork graph (~150M multiply-adds per row) costs far more. Wall
    time (``model_ms``) is never under the CPU time: waits are in it, not in the CPU time."""
    set_rollout(project, server, canary={"tag": tags["twin"], "percent": 50})
    sample = [{**r, "request_id": f"cost-{i}"} for i, r in enumerate(requests_[:160])]
    for request in sample:
        assert post(f"{server.url}/predict", request)[0] == 200
    records = logged(project, {r["request_id"] for r in sample})
    cost = {
        v: np.median(
            [
                records[r["request_id"]]["model_cpu_ms"]
                for r in sample
                if records[r["request_id"]]["variant"] == v
            ]
        )
        for v in ("stable", "canary")
    }
    assert 0.5 < cost["canary"] / cost["stable"] < 2, cost
    for request in sample:
        record = records[request["request_id"]]
        assert 0 < record["model_cpu_ms"] <= record["model_ms"] + 0.01, record

    set_rollout(project, server, canary={"tag": tags["slow"], "percent": 100}, canary_timeout_ms=20_000)
    slow = [{**r, "request_id": f"cost-slow-{i}"} for i, r in enumerate(requests_[:5])]
    for request in slow:
        status, answer = post(f"{server.url}/predict", request)
        assert (status, answer["variant"]) == (200, "canary")
    slow_records = logged(project, {r["request_id"] for r in slow})
    slow_cost = min(slow_records[r["request_id"]]["model_cpu_ms"] for r in slow)
    assert slow_cost > 20 * cost["stable"], (slow_cost, cost)


def test_rollout_changes_are_picked_up_and_a_broken_file_keeps_the_running_one(
    project: Path, server: Server, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    set_rollout(project, server)
    (project / "deployment" / "rollout.yaml").write_text(
        yaml.safe_dump({"canary": {"tag": tags["twin"], "percent": 100}})
    )
    wait_until(
        lambda: post(f"{server.url}/predict", requests_[0])[1]["variant"] == "canary",
        15,
        "the changed rollout file picked up",
        every=0.1,
    )
    (project / "deployment" / "rollout.yaml").write_text(
        yaml.safe_dump({"canary": {"tag": "ad_click:nope", "percent": 5}})
    )
    status, answer = post(f"{server.url}/rollout", {})
    assert status == 409
    assert "ad_click:nope" in answer["error"]
    assert answer["serving"]["canary"]["tag"] == tags["twin"]
    assert post(f"{server.url}/predict", requests_[0])[1]["variant"] == "canary"
    assert metric(server, "mlsd_rollout_reloads_total", outcome="error") >= 1


def test_openapi_describes_the_real_request_and_response(server: Server) -> None:
    status, text = get(f"{server.url}/docs.json")
    assert status == 200
    doc = json.loads(text)
    assert {"/predict", "/predict_batch", "/rollout"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    request = next(s for name, s in schemas.items() if name.startswith("AdClickRequest"))
    assert request["required"] == ["user_id", "ad_id", "category", "position", "hour"]
    assert request["properties"]["position"]["maximum"] == 10
    assert "travel" in request["properties"]["category"]["enum"]
    response = next(s for name, s in schemas.items() if name.startswith("Prediction"))
    assert {"score", "model_tag", "variant", "request_id", "missing_features"} <= set(response["properties"])


def test_prediction_log_has_one_record_per_request_after_a_burst_and_shutdown(
    project: Path, tags: dict[str, str], requests_: list[dict[str, Any]]
) -> None:
    root = short_tmp_dir()
    burst = Path(
        shutil.copytree(project, root / "p", ignore=shutil.ignore_patterns("serve-*.log", ".bentoml"))
    )
    shutil.rmtree(burst / LOG_DIR, ignore_errors=True)
    (burst / "deployment" / "rollout.yaml").write_text("{}\n")
    srv = Server(burst)
    try:
        srv.wait_ready()
        sample = [{**requests_[i % len(requests_)], "request_id": f"burst-{i}"} for i in range(600)]
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda r: post(f"{srv.url}/predict", r)[0], sample))
        assert statuses == [200] * 600
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
    records = list(read_log(burst / LOG_DIR))
    ids = [r["request_id"] for r in records]
    assert len(ids) == 600
    assert set(ids) == {r["request_id"] for r in sample}
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.services
def test_production_profile_serves_from_redis(production_project: Path) -> None:
    """MLSD_ENV=production: features from the Redis online store, Feast registry in Postgres."""
    from mlsd.serving import build_scorer, load_config

    project_copy = production_project
    shutil.copytree(
        ROOT / "deployment", project_copy / "deployment", ignore=shutil.ignore_patterns("__pycache__")
    )
    config = load_config(project_copy, env="production")
    assert config.parameters["feature_store"]["config_file"] == "feature_store.production.yaml"
    spec = config.spec
    holdout = pd.read_parquet(project_copy / "data" / "05_model_input" / "holdout.parquet").head(20)
    fields = ["user_id", "ad_id", "category", "position", "hour"]
    sample = [
        dict(zip(fields, row, strict=True)) for row in holdout[fields].astype(object).itertuples(index=False)
    ]
    sample.append({**sample[0], "user_id": 987_654_321, "request_id": "unknown-user"})
    store = open_store(
        FeatureStoreParams(
            repo_path=project_copy / "feature_repo", config_file="feature_store.production.yaml"
        )
    )
    expected = online_features(store, spec, [{k: r[k] for k in spec.serving.entity_keys} for r in sample])
    scorer = build_scorer(config)
    try:
        stored = scorer.features.read(sample)
        for name in spec.feature_fields():
            got, want = stored.values[name][:-1], expected[name][:-1]
            if isinstance(want[0], float):
                want = pytest.approx(want, rel=1e-6)
            assert got == want, name
        answers = scorer.score(sample)
    finally:
        scorer.close()
    assert "age" in answers[-1]["missing_features"]
    assert all(a["missing_features"] == [] for a in answers[:-1])
    assert {a["model_tag"] for a in answers} == {ModelRegistry(project_copy / REGISTRY, "ad_click").stable()}

    # The real server of the production profile: it will not start without its bearer token, and
    # with it, scoring needs the token while health and metrics stay open.
    refused = Server(project_copy, env={"MLSD_ENV": "production", "MLSD_API_TOKEN": ""})
    with pytest.raises(RuntimeError, match=r"serving\.auth_token_env is MLSD_API_TOKEN"):
        refused.wait_ready()
    refused.stop()
    token = "prod-token-for-this-test"
    with serving(project_copy, env={"MLSD_ENV": "production", "MLSD_API_TOKEN": token}) as srv:
        assert post(f"{srv.url}/predict", sample[0])[0] == 401
        assert post(f"{srv.url}/predict", sample[0], headers={"Authorization": "Bearer nope"})[0] == 401
        assert post(f"{srv.url}/rollout", {})[0] == 401
        status, body = post(f"{srv.url}/predict", sample[0], headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        assert body["missing_features"] == []  # read from Redis
        assert get(f"{srv.url}/metrics")[0] == 200


def test_hot_path_uses_no_pandas_and_labels_follow_the_spec_threshold(
    project: Path, requests_: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scorer in process: no DataFrame is built per request; label = score >= threshold."""
    import dataclasses

    from mlsd.serving import build_scorer, load_config

    (project / "deployment" / "rollout.yaml").write_text("{}\n")  # stable only, whatever ran before
    config = load_config(project)
    serving = config.spec.serving.model_copy(update={"label_threshold": 0.02})
    config = dataclasses.replace(config, spec=config.spec.model_copy(update={"serving": serving}))
    scorer = build_scorer(config)

    def no_frames(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a pandas DataFrame was built on the serving path")

    try:
        monkeypatch.setattr(pd.DataFrame, "__init__", no_frames)
        answers = scorer.score([{**r, "request_id": None} for r in requests_[:50]])
        monkeypatch.undo()
    finally:
        scorer.close()
    labels = [a["label"] for a in answers]
    assert labels == [int(a["score"] >= 0.02) for a in answers]
    assert 0 < sum(labels) < 50


def test_rollout_cli_starts_promotes_and_rolls_back_a_canary(project_copy: Path) -> None:
    from mlsd.serving.rollout import read_rollout

    shutil.copytree(
        ROOT / "deployment", project_copy / "deployment", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = project_copy / "deployment" / "rollout.yaml"
    registry = ModelRegistry(project_copy / REGISTRY, "ad_click")
    stable = str(registry.stable())
    graph = (registry.get(stable).path / MODEL_FILE).read_bytes()
    twin = registry.register(graph, {}, {})
    misnamed = registry.register(
        renamed(onnx.load_from_string(graph), {"age": "age_years"}).SerializeToString(), {}, {}
    )

    status = mlsd_cli(project_copy, "rollout", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["stable"].startswith(stable)

    refused = {
        "is the stable model": ["--canary", stable, "--percent", "10"],
        "input 0: ('age_years'": ["--canary", misnamed, "--percent", "10"],
        "less than or equal to 100": ["--canary", twin, "--percent", "150"],
        "registered versions": ["--canary", "ad_click:nope", "--percent", "10"],
    }
    for message, args in refused.items():
        result = mlsd_cli(project_copy, "rollout", "start", *args)
        assert result.returncode == 2, result.stdout
        assert message in result.stderr
    assert read_rollout(path).canary is None  # nothing refused was written

    assert mlsd_cli(project_copy, "rollout", "start", "--canary", twin, "--percent", "20").returncode == 0
    rollout = read_rollout(path)
    assert (rollout.canary.tag, rollout.canary.percent) == (twin, 20)  # type: ignore[union-attr]
    assert mlsd_cli(project_copy, "rollout", "rollback").returncode == 0
    assert read_rollout(path).canary is None
    assert "no canary" in mlsd_cli(project_copy, "rollout", "rollback").stderr

    assert mlsd_cli(project_copy, "rollout", "start", "--canary", twin, "--percent", "20").returncode == 0
    promoted = mlsd_cli(project_copy, "rollout", "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert registry.stable() == twin
    assert read_rollout(path).canary is None
    assert registry.history()[-1]["reason"] == "canary promoted (mlsd rollout promote)"
