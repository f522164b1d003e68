"""The service's HTTP surface and its isolation, on real `bentoml serve` processes.

One server of a built project serves the module (its BentoML home is a shared one, as a user's
``~/bentoml`` is); a second project joins it on the same machine to show each keeps its own
metrics. The docs page is loaded in headless Chromium, and misconfigured production servers are
started for real: an unset or malformed store variable must stop them, a store that is down must
not (its requests are scored on defaults, the failures counted as ``unavailable``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsd import __version__
from mlsd.spec import load_spec
from tests.chromium import browser, find_chromium
from tests.conftest import ROOT, holdout_requests, mlsd_cli, served_copy, short_tmp_dir
from tests.server import Server, free_port, get, metric, post, serving
from tests.tools import required

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    folder = short_tmp_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_home(root: Path) -> str:
    """One BentoML home for every server of the module, as ``~/bentoml`` is for a user's projects."""
    return str(root / "home" / "bentoml")


@pytest.fixture(scope="module")
def project(built_project: Path, root: Path) -> Path:
    return served_copy(built_project, root / "a")


@pytest.fixture(scope="module")
def server(project: Path, shared_home: str, root: Path) -> Iterator[Server]:
    # PROMETHEUS_MULTIPROC_DIR set where `bentoml serve` starts (a shell's export, or a test runner
    # that imported bentoml): the serve process itself must not take a metrics folder for it.
    env = {"BENTOML_HOME": shared_home, "PROMETHEUS_MULTIPROC_DIR": str(root / "inherited")}
    with serving(project, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def requests_(project: Path) -> list[dict[str, Any]]:
    return holdout_requests(project, 20)


def _started_ms(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).create_time() * 1000)


def _service_names(server: Server) -> set[str]:
    return set(re.findall(r'service_name="([^"]*)"', get(f"{server.url}/metrics")[1]))


def test_two_projects_on_one_machine_each_report_only_their_own_metrics(
    built_project: Path, root: Path, shared_home: str, server: Server, requests_: list[dict[str, Any]]
) -> None:
    """Regression: BentoML keeps every server's Prometheus files under its home and empties them
    when a server starts, so a second project's start wiped the first one's counts and each
    /metrics then reported the other service's name and requests too. And `bentoml serve` itself,
    started with PROMETHEUS_MULTIPROC_DIR in its environment, took a folder named after its parent
    process that outlived it (this failed whenever the test runner's environment had the variable)."""
    for request in requests_[:5]:
        assert post(f"{server.url}/predict", request)[0] == 200
    before = metric(server, "mlsd_requests_total", variant="stable")
    other = served_copy(built_project, root / "b")
    (other / "conf" / "local" / "parameters.yml").write_text(
        yaml.safe_dump({"serving": {"service_name": "mlsd-ad-click-b"}})
    )
    with serving(other, env={"BENTOML_HOME": shared_home}) as second:
        for request in requests_[:7]:
            assert post(f"{server.url}/predict", request)[0] == 200
        for request in requests_[:3]:
            assert post(f"{second.url}/predict", request)[0] == 200
        assert metric(server, "mlsd_requests_total", variant="stable") == before + 7
        assert metric(second, "mlsd_requests_total", variant="stable") == 3
        assert _service_names(server) == {"mlsd-ad-click"}
        assert _service_names(second) == {"mlsd-ad-click-b"}
        assert json.loads(get(f"{second.url}/docs.json")[1])["info"]["title"] == "mlsd-ad-click-b"
    folders = sorted(p.name for p in (root / "a" / "data" / "serving" / "prometheus").iterdir())
    assert folders == [f"{server.proc.pid}-{_started_ms(server.proc.pid)}"]  # this server's, in its project
    assert not any(Path(shared_home, "prometheus_multiproc_dir").glob("*.db"))


def test_mlsd_simulate_finds_the_service_at_the_configured_port(project: Path, server: Server) -> None:
    """`mlsd simulate` without --url sends to conf serving.port (it was 3000, whatever served)."""
    (project / "conf" / "local" / "parameters.yml").write_text(
        yaml.safe_dump({"serving": {"port": server.port}})
    )
    before = metric(server, "mlsd_requests_total", absent=0.0, variant="stable")
    result = mlsd_cli(project, "simulate", "--count", "6", "--rate", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["answered"] == 6
    assert metric(server, "mlsd_requests_total", variant="stable") - before == 6


def _chromium() -> str:
    return find_chromium() or required("chromium", "chromium")


def _loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "data" or (
        parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost", "::1")
    )


def test_the_docs_page_in_a_browser_requests_nothing_outside_this_machine(server: Server) -> None:
    """Regression: BentoML's page at / loaded Google Tag Manager (and its Swagger UI the online
    validator's badge). Every request the page makes, blocked ones included, goes to loopback."""
    with browser(_chromium()) as chromium:
        planted = chromium.load("data:text/html,<img src='http://192.0.2.1/x.png'>")
        assert "http://192.0.2.1/x.png" in planted.requests  # the browser reports what a page asks for
        for path in ("/", "/docs"):
            page = chromium.load(f"{server.url}{path}")
            outside = [url for url in page.requests if not _loopback(url)]
            assert outside == [], outside
            assert f"{server.url}/docs.json" in page.requests
            assert f"{server.url}/static_content/swagger-ui-bundle.js" in page.requests
            for route in ("/predict", "/predict_batch", "/rollout"):  # Swagger UI rendered the document
                assert f'data-path="{route}"' in page.dom, path
            assert "googletagmanager" not in page.dom


def test_the_openapi_document_names_the_service_and_each_routes_answers(server: Server) -> None:
    doc = json.loads(get(f"{server.url}/docs.json")[1])
    assert doc["info"]["title"] == "mlsd-ad-click"
    assert doc["info"]["version"] == __version__
    assert "click" in doc["info"]["description"]
    assert "contact" not in doc["info"]
    routes = ("/predict", "/predict_batch", "/rollout")
    answers = {path: sorted(doc["paths"][path]["post"]["responses"]) for path in routes}
    assert answers == {
        "/predict": ["200", "400", "413", "415", "500"],
        "/predict_batch": ["200", "400", "413", "415", "500"],
        "/rollout": ["200", "400", "409", "413", "415", "500"],
    }
    assert doc["paths"]["/predict"]["post"]["requestBody"]["required"] is True
    assert doc["paths"]["/predict_batch"]["post"]["requestBody"]["required"] is True
    assert doc["paths"]["/rollout"]["post"]["requestBody"]["required"] is False  # it takes no body
    assert get(f"{server.url}/docs")[0] == 200


def _with_headers(url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    """POST JSON; status, decoded answer and the answer's headers (lower-case names)."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", parts.path, body=data, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        text = response.read()
        return response.status, json.loads(text or b"null"), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_x_request_id_is_the_request_id_and_comes_back(
    server: Server, requests_: list[dict[str, Any]]
) -> None:
    url = f"{server.url}/predict"
    status, body, headers = _with_headers(url, requests_[0], {"X-Request-ID": "edge-42.a"})
    assert (status, body["request_id"], headers["x-request-id"]) == (200, "edge-42.a", "edge-42.a")
    status, body, headers = _with_headers(
        url, {**requests_[0], "request_id": "in-body"}, {"X-Request-ID": "h"}
    )
    assert (body["request_id"], headers["x-request-id"]) == ("in-body", "in-body")  # the body wins
    status, body, headers = _with_headers(url, requests_[0], {"X-Request-ID": "not valid!"})
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])  # replaced by one the server made
    assert headers["x-request-id"] == body["request_id"]
    status, body, headers = _with_headers(
        f"{server.url}/predict_batch", {"requests": requests_[:2]}, {"X-Request-ID": "call-1"}
    )
    assert (status, headers["x-request-id"]) == (200, "call-1")
    status, body, headers = _with_headers(url, {"user_id": 1}, {"X-Request-ID": "bad-call-1"})
    assert (status, headers["x-request-id"]) == (400, "bad-call-1")  # errors carry it too


AD = {"user_id": 1, "ad_id": 2, "category": "auto", "position": 3, "hour": 1}
CLIENT_ERRORS = [
    # (kind, status, body, content type, what the log line names)
    ("bad_request", 400, {k: v for k, v in AD.items() if k != "hour"}, None, "hour: Field required"),
    ("bad_request", 400, b'{"user_id": 1,', None, "json"),
    ("bad_request", 400, {**AD, "position": 99}, None, "position"),
    ("too_large", 413, b" " * 2_000_000, None, "serving.max_body_bytes"),
    ("unsupported_media_type", 415, b"user_id=1", "application/x-www-form-urlencoded", "application/json"),
]


def test_client_errors_are_one_warning_line_each_and_counted_never_as_server_errors(server: Server) -> None:
    """Regression: every 400 was logged at ERROR with pydantic's traceback, and client errors
    were not counted at all."""
    kinds = {kind for kind, *_ in CLIENT_ERRORS}
    before = {
        k: metric(server, "mlsd_request_errors_total", absent=0.0, variant="none", kind=k) for k in kinds
    }
    scoring_errors = metric(server, "mlsd_request_errors_total", absent=0.0, variant="stable")
    start = len(server.log())
    for i, (_, status, body, media, _) in enumerate(CLIENT_ERRORS):
        headers = {"X-Request-ID": f"client-error-{i}", **({"Content-Type": media} if media else {})}
        got, answer = post(f"{server.url}/predict", body, headers=headers)
        assert got == status, answer
    expected = {k: sum(1 for kind, *_ in CLIENT_ERRORS if kind == k) for k in kinds}
    for kind in kinds:
        after = metric(server, "mlsd_request_errors_total", variant="none", kind=kind)
        assert after - before[kind] == expected[kind], kind
    assert metric(server, "mlsd_request_errors_total", absent=0.0, variant="stable") == scoring_errors
    log = server.log()[start:]
    assert "Traceback" not in log
    assert "[ERROR]" not in log
    for i, (kind, status, _, _, named) in enumerate(CLIENT_ERRORS):
        lines = [line for line in log.splitlines() if f"(request_id client-error-{i})" in line]
        assert len(lines) == 1, lines
        assert "[WARNING]" in lines[0]
        assert f"client error {status} {kind} on /predict" in lines[0]
        assert named.lower() in lines[0].lower()


def _production(project: Path, **env: str) -> dict[str, str]:
    return {
        "MLSD_ENV": "production",
        "MLSD_API_TOKEN": "surface-test-token",
        "MLSD_REDIS_URL": "127.0.0.1:6379,db=11",
        "MLSD_FEAST_REGISTRY_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/none",
        **env,
    }


MISCONFIGURED = {
    "redis url empty": (
        {"MLSD_REDIS_URL": ""},
        r"connection_string reads \$MLSD_REDIS_URL, which is not set: export MLSD_REDIS_URL",
    ),
    "redis url malformed": (
        {"MLSD_REDIS_URL": "localhost"},
        r"\$MLSD_REDIS_URL \(feature_store.production.yaml: online_store.connection_string\) has "
        r"'localhost' where host:port belongs",
    ),
    "registry url empty": (
        {"MLSD_FEAST_REGISTRY_URL": ""},
        r"registry.path reads \$MLSD_FEAST_REGISTRY_URL, which is not set",
    ),
}


@pytest.mark.parametrize(("variables", "named"), list(MISCONFIGURED.values()), ids=list(MISCONFIGURED))
def test_an_unset_or_malformed_store_variable_stops_the_start_naming_it(
    project: Path, shared_home: str, variables: dict[str, str], named: str
) -> None:
    """Regression: the server started, answered /readyz 200 and scored every request on
    defaults, logging only "warm-up read failed ('port')"."""
    refused = Server(project, env={**_production(project, **variables), "BENTOML_HOME": shared_home})
    with pytest.raises(RuntimeError, match=r"bentoml serve exited [1-9]"):
        refused.wait_ready()
    assert refused.stop() != 0
    assert re.search(named, re.sub(r"\s+", " ", refused.log())), refused.log()[-3000:]


@pytest.mark.services
def test_a_store_down_at_start_is_named_counted_unavailable_and_requests_get_defaults(
    production_project: Path,
) -> None:
    """Regression: a refused connection was counted as kind="timeout" and the log did not name
    the variable; MlsdOnlineStoreDown (which sums every kind) must page on it."""
    project = production_project
    shutil.copytree(ROOT / "deployment", project / "deployment", ignore=shutil.ignore_patterns("__pycache__"))
    production = project / "conf" / "production" / "parameters.yml"  # `--env production` skips conf/local
    parameters = yaml.safe_load(production.read_text())
    parameters["serving"].update(online_retry_s=0, online_timeout_ms=300)  # every request asks the store
    production.write_text(yaml.safe_dump(parameters))
    closed = free_port()
    env = _production(project, MLSD_REDIS_URL=f"127.0.0.1:{closed},db=11")
    env["MLSD_FEAST_REGISTRY_URL"] = os.environ["MLSD_FEAST_REGISTRY_URL"]  # the real one: views are there
    spec = load_spec(project / "conf" / "base" / "problem.yml")
    stored = {name for view in spec.feature_views if view.online for name in view.fields}
    token = {"Authorization": f"Bearer {env['MLSD_API_TOKEN']}"}
    with serving(project, env=env) as srv:
        lines = [line for line in srv.log().splitlines() if "cannot be reached at start-up" in line]
        assert len(lines) == 1, srv.log()[-3000:]
        assert f"redis at 127.0.0.1:{closed} ($MLSD_REDIS_URL)" in lines[0]
        assert "[WARNING]" in lines[0]
        assert metric(srv, "mlsd_online_store_errors_total", kind="unavailable") == 1
        assert metric(srv, "mlsd_online_store_errors_total", absent=0.0, kind="timeout") == 0
        for request in holdout_requests(project, 4):
            status, answer = post(f"{srv.url}/predict", request, headers=token)
            assert status == 200, answer
            assert set(answer["missing_features"]) == stored
        assert metric(srv, "mlsd_online_store_errors_total", kind="unavailable") == 1 + 4
        for kind in ("timeout", "error"):
            assert metric(srv, "mlsd_online_store_errors_total", absent=0.0, kind=kind) == 0
        on_requests = [line for line in srv.log().splitlines() if "cannot be reached on a request" in line]
        assert len(on_requests) == 4
        assert all(f"127.0.0.1:{closed}: Connection refused" in line for line in on_requests)
        assert post(f"{srv.url}/predict", holdout_requests(project, 1)[0])[0] == 401
        assert metric(srv, "mlsd_request_errors_total", variant="none", kind="unauthorized") == 1
    _alert_pages_on_unavailable(project)


SUMMARY = "Online-store reads fail (1/s): requests are scored on defaults"
ACTION = "is the online store (Redis) up and reachable from the service?"


def _alert_pages_on_unavailable(folder: Path) -> None:
    """promtool: MlsdOnlineStoreDown fires on failures counted as kind="unavailable" from start-up."""
    promtool = required("promtool", "prometheus")
    rules = ROOT / "monitoring" / "prometheus" / "rules" / "serving.yml"
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'mlsd_online_store_errors_total{kind="unavailable"}', "values": "1+60x20"}
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "MlsdOnlineStoreDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "MlsdOnlineStoreDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page"},
                                "exp_annotations": {"summary": SUMMARY, "action": ACTION},
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = folder / "store_down_test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
