"""The HTTP surface in process: request ids, client errors logged and counted, the offline docs
page and the OpenAPI document, and the checks a server runs before it starts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from mlsd.errors import ConfigError
from mlsd.serving import load_config
from mlsd.serving.docs import CSP, ApiDocs, api_document, docs_page
from mlsd.serving.http import BENTOML_REQUEST_LOGGER, RequestLog, request_id
from mlsd.serving.preflight import StoreAddress, online_store_address, own_metrics_dir
from tests.conftest import ROOT, copy_project
from tests.test_serving_units import _answers, _asgi

PRODUCTION = load_config(ROOT, env="production")


def _errors(kind: str) -> float:
    value = REGISTRY.get_sample_value("mlsd_request_errors_total", {"variant": "none", "kind": kind})
    return value or 0.0


def _header(sent: list[dict[str, Any]], name: bytes) -> bytes | None:
    return dict(sent[0]["headers"]).get(name)


# ---- request ids and client errors


def test_a_valid_x_request_id_is_the_request_id_and_is_sent_back() -> None:
    used: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        used.append(request_id())
        used.append(request_id("from-the-body") if scope["path"] == "/predict_batch" else None)
        await _answers(200, b"{}")(scope, receive, send)

    log = RequestLog(app, paths=("/predict", "/predict_batch"))
    _, _, sent = _asgi(log, [(b"x-request-id", b"caller-7.a:b_c")], [b"{}"])
    assert used[0] == "caller-7.a:b_c"
    assert _header(sent, b"x-request-id") == b"caller-7.a:b_c"
    _, _, sent = _asgi(log, [(b"x-request-id", b"caller-8")], [b"{}"], path="/predict_batch")
    assert _header(sent, b"x-request-id") == b"from-the-body"  # a body's request_id wins
    for invalid in (b"has space", b"x" * 65, b"", b"semi;colon"):
        used.clear()
        _, _, sent = _asgi(log, [(b"x-request-id", invalid)], [b"{}"])
        made = _header(sent, b"x-request-id")
        assert re.fullmatch(rb"[0-9a-f]{32}", made or b""), invalid
        assert used[0] == (made or b"").decode()
    assert request_id() is None
    assert request_id("given") == "given"


@pytest.mark.parametrize(
    ("status", "kind", "body"),
    [
        (400, "bad_request", b'{"error": "invalid request: hour: Field required", "detail": "hour: ..."}'),
        (413, "too_large", b'{"error": "request body is 9 bytes; the limit is 1 (serving.max_body_bytes)"}'),
        (415, "unsupported_media_type", b'{"error": "Content-Type \'text/plain\': send application/json"}'),
        (401, "unauthorized", b'{"error": "no Authorization header: send ..."}'),
        (409, "rollout_refused", b'{"error": "canary: ad_click:nope is not registered", "serving": {}}'),
    ],
)  # fmt: skip
def test_a_client_error_is_one_warning_line_and_counted_by_kind(
    status: int, kind: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    log = RequestLog(_answers(status, body, chunked=True), paths=("/predict", "/rollout"))
    before = _errors(kind)
    with caplog.at_level(logging.INFO):
        got, answered, _ = _asgi(log, [(b"x-request-id", b"rid-1")], [b"{}"])
    assert (got, answered) == (status, body)  # passed on untouched
    assert _errors(kind) - before == 1
    lines = [r for r in caplog.records if r.name == "mlsd.serving.http"]
    assert [r.levelno for r in lines] == [logging.WARNING]
    message = lines[0].getMessage()
    assert "\n" not in message
    assert f"client error {status} {kind} on /predict (request_id rid-1): " in message
    assert json.loads(body)["error"] in message
    # Not an API path, or not a client error: nothing logged or counted.
    caplog.clear()
    _asgi(log, [], [b""], path="/nowhere")
    _asgi(RequestLog(_answers(200, b"{}"), paths=("/predict",)), [], [b"{}"])
    assert _errors(kind) - before == 1
    assert not [r for r in caplog.records if r.name == "mlsd.serving.http"]


def test_bentoml_tracebacks_of_client_errors_are_dropped_but_server_errors_kept() -> None:
    from bentoml.exceptions import BadInput, InternalServerError
    from pydantic import BaseModel, ValidationError

    RequestLog(_answers(200, b"{}"), paths=("/predict",))  # installs the filter
    bentoml_log = logging.getLogger(BENTOML_REQUEST_LOGGER)

    class Model(BaseModel):
        hour: int

    def record(exc: BaseException) -> logging.LogRecord:
        info = (type(exc), exc, None)
        return bentoml_log.makeRecord(bentoml_log.name, logging.ERROR, __file__, 1, "Exception on", (), info)

    with pytest.raises(ValidationError) as invalid:
        Model.model_validate({})
    assert not bentoml_log.filter(record(invalid.value))
    assert not bentoml_log.filter(record(BadInput("malformed JSON")))
    assert bentoml_log.filter(record(InternalServerError("the model failed")))
    assert bentoml_log.filter(record(RuntimeError("a bug")))
    RequestLog(_answers(200, b"{}"), paths=("/predict",))
    assert len([f for f in bentoml_log.filters if type(f).__name__ == "_ClientErrorTracebacks"]) == 1


# ---- the docs page and the OpenAPI document

BENTOML_DOC = {
    "openapi": "3.0.2",
    "info": {"title": "mlsd-ad-click", "version": "None", "description": "![](https://img.shields.io/x)",
             "contact": {"name": "BentoML Team", "email": "contact@bentoml.com"}},
    "paths": {
        path: {"post": {
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "ok"}, "400": {}, "404": {}, "500": {}},
        }}
        for path in ("/predict", "/predict_batch", "/rollout")
    } | {"/healthz": {"get": {"responses": {"200": {"description": "ok"}}}}},
    "components": {"schemas": {}},
}  # fmt: skip


@pytest.mark.parametrize("auth", [False, True])
def test_the_document_names_the_service_and_lists_each_routes_real_answers(auth: bool) -> None:
    doc = api_document(BENTOML_DOC, "mlsd-ad-click", "0.1.0", "Will this user click?", auth)
    assert doc["info"] == {
        "title": "mlsd-ad-click",
        "version": "0.1.0",
        "description": "Will this user click?",
    }
    paths = doc["paths"]
    extra = ["401"] if auth else []
    expect = {
        "/predict": sorted(["200", "400", "413", "415", "500", *extra]),
        "/predict_batch": sorted(["200", "400", "413", "415", "500", *extra]),
        "/rollout": sorted(["200", "400", "409", "413", "415", "500", *extra]),
    }
    for path, statuses in expect.items():
        operation = paths[path]["post"]
        assert sorted(operation["responses"]) == statuses, path
        assert operation["requestBody"]["required"] is (path != "/rollout")  # /rollout takes no body
        assert operation["parameters"][0]["name"] == "X-Request-ID"
        assert ("security" in operation) is auth
    assert paths["/rollout"]["post"]["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MlsdRolloutRefused"
    }
    assert paths["/healthz"] == BENTOML_DOC["paths"]["/healthz"]
    assert BENTOML_DOC["info"]["version"] == "None"  # the input is not changed


def test_the_docs_page_loads_nothing_from_outside_this_server() -> None:
    page = docs_page("mlsd-ad-click").decode()
    references = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(references) == 3
    assert all(r.startswith("./static_content/") for r in references), references
    assert "http" not in page.replace("http://www.w3.org", "")
    assert "validatorUrl: null" in page
    assert "default-src 'none'" in CSP
    assert "connect-src 'self'" in CSP

    async def bentoml(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps(BENTOML_DOC).encode() if scope["path"] == "/docs.json" else b"bentoml"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    docs = ApiDocs(bentoml, config=PRODUCTION, auth=True)
    for path in ("/", "/docs"):
        status, body, sent = _get(docs, path)
        assert (status, body) == (200, docs_page("mlsd-ad-click"))
        assert _header(sent, b"content-security-policy") == CSP.encode()
    status, body, _ = _get(docs, "/docs.json")
    assert json.loads(body)["info"]["version"] != "None"
    assert "401" in json.loads(body)["paths"]["/predict"]["post"]["responses"]
    assert _get(docs, "/static_content/x.js")[1] == b"bentoml"


def _get(app: Any, path: str) -> tuple[int, bytes, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body, sent


# ---- checks before the server starts


MALFORMED = [
    ({"MLSD_REDIS_URL": None}, r"connection_string reads \$MLSD_REDIS_URL, which is not set: export"),
    ({"MLSD_REDIS_URL": ""}, r"reads \$MLSD_REDIS_URL, which is not set"),
    ({"MLSD_REDIS_URL": "localhost"}, r"\$MLSD_REDIS_URL \(.*connection_string\) has 'localhost' where host"),
    ({"MLSD_REDIS_URL": "127.0.0.1:redis,db=0"}, r"\$MLSD_REDIS_URL .* has '127.0.0.1:redis'"),
    ({"MLSD_REDIS_URL": "127.0.0.1:70000"}, r"\$MLSD_REDIS_URL .* has '127.0.0.1:70000'"),
    ({"MLSD_REDIS_URL": "db=0,password=x"}, r"\$MLSD_REDIS_URL .* names no host:port"),
    ({"MLSD_FEAST_REGISTRY_URL": None}, r"registry.path reads \$MLSD_FEAST_REGISTRY_URL, which is not set"),
    ({"MLSD_FEAST_REGISTRY_URL": "pg at localhost"}, r"\$MLSD_FEAST_REGISTRY_URL .* is not a SQLAlchemy URL"),
]


@pytest.mark.parametrize(("variables", "named"), MALFORMED)
def test_an_unset_or_malformed_store_variable_is_named(
    variables: dict[str, str | None], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLSD_REDIS_URL", "127.0.0.1:6379,db=11")
    monkeypatch.setenv("MLSD_FEAST_REGISTRY_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/feast")
    for name, value in variables.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named) as error:
        online_store_address(PRODUCTION)
    assert "password=x" not in str(error.value)  # a value's secrets are never echoed


def test_a_valid_store_address_is_parsed_and_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert online_store_address(load_config(ROOT)) is None  # the embedded profile: SQLite
    monkeypatch.setenv("MLSD_REDIS_URL", "127.0.0.1:6379,db=11,password=s3cret")
    monkeypatch.setenv("MLSD_FEAST_REGISTRY_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/feast")
    address = online_store_address(PRODUCTION)
    assert address == StoreAddress("redis", (("127.0.0.1", 6379),), "MLSD_REDIS_URL")
    assert str(address) == "redis at 127.0.0.1:6379 ($MLSD_REDIS_URL)"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert StoreAddress("redis", (("127.0.0.1", port),)).unreachable(1.0) is None
    why = StoreAddress("redis", (("127.0.0.1", port),)).unreachable(1.0)  # closed now
    assert why is not None
    assert f"127.0.0.1:{port}" in why
    assert "refused" in why.lower()


@pytest.mark.parametrize(
    "argv",
    [["/p/.venv/bin/bentoml", "serve", "deployment"], ["/p/site-packages/bentoml/__main__.py", "serve", "x"]],
)
def test_bentoml_serve_itself_takes_no_metrics_folder(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: `bentoml serve` imports the service too; with PROMETHEUS_MULTIPROC_DIR in its
    environment it took a folder named after its parent (a shell, a test runner) that outlived it."""
    config = dataclasses.replace(PRODUCTION, project=tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "inherited"))
    monkeypatch.setattr(sys, "argv", argv)
    assert own_metrics_dir(config) is None
    assert not (tmp_path / "data").exists()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "inherited")
    worker = ["/p/site-packages/_bentoml_impl/worker/service.py", "deployment", "--fd", "3"]
    monkeypatch.setattr(sys, "argv", worker)
    assert own_metrics_dir(config) is not None  # a worker does take one


def test_each_server_gets_its_own_metrics_folder_and_gone_servers_lose_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker (PROMETHEUS_MULTIPROC_DIR set by `bentoml serve`) moves its files to a folder of its
    server (the parent process) in the project; a folder of a server that no longer runs goes."""
    config = dataclasses.replace(PRODUCTION, project=tmp_path)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert own_metrics_dir(config) is None  # in process, not a worker: nothing moves
    root = tmp_path / "data" / "serving" / "prometheus"
    gone = root / "999999999-1"  # no such pid
    reused = root / f"{os.getppid()}-1"  # a running pid, but another start time: another server
    for folder in (gone, reused):
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    shared = tmp_path / "home" / "bentoml" / "prometheus_multiproc_dir"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    mine = own_metrics_dir(config)
    assert mine is not None
    assert mine.parent == root
    assert mine.name.startswith(f"{os.getppid()}-")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(mine)
    assert sorted(p.name for p in root.iterdir()) == [mine.name]
    # A sibling worker of the same server lands in the same folder and keeps its files.
    (mine / "counter_2.db").write_bytes(b"x")
    assert own_metrics_dir(config) == mine
    assert (mine / "counter_2.db").exists()
    # Another server (another parent process) gets a folder of its own and keeps this one's.
    script = (
        "import dataclasses, pathlib\n"
        "from mlsd.serving import load_config\n"
        "from mlsd.serving.preflight import own_metrics_dir\n"
        f"config = load_config(pathlib.Path({str(ROOT)!r}), env='production')\n"
        f"print(own_metrics_dir(dataclasses.replace(config, project=pathlib.Path({str(tmp_path)!r}))))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)},
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    theirs = Path(other.stdout.strip())
    assert theirs != mine
    assert theirs.parent == root
    assert mine.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_serve_and_dashboards_take_their_port_from_conf_or_the_command_line(tmp_path: Path) -> None:
    """`make serve PORT=3100` (was: always 3000); without PORT, conf serving.port."""
    project = copy_project(tmp_path / "p", gate=None)
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({"serving": {"port": 3456}}))

    def recipe(*args: str) -> str:
        dry = subprocess.run(
            ["make", "-n", "-C", str(ROOT), *args],
            env={**os.environ, "MLSD_PROJECT_DIR": str(project)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr
        return next(line for line in dry.stdout.splitlines() if " --port " in line)

    assert recipe("serve").endswith("--host 127.0.0.1 --port 3456")
    assert recipe("serve", "PORT=3100").endswith("--host 127.0.0.1 --port 3100")
    assert recipe("dashboards").endswith("--host 127.0.0.1 --port 8000")
    assert recipe("dashboards", "PORT=8100").endswith("--host 127.0.0.1 --port 8100")
