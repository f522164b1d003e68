"""The project's own alert rules in a real Prometheus over a real system: quiet when it is healthy,
and each fault raises its own alert by name and no unrelated one.

A `bentoml serve` of the built project, `mlsd monitor exporter` and Debian's `prometheus` run
for the module. Prometheus gets the project's scrape config and rule files as they are in
monitoring/prometheus/, rewritten only for the targets' ports, a 1 s scrape and evaluation interval
and a tmp storage dir, plus one planted rule file of this test's own.

What a short test can observe: the alerts have `for:` durations of minutes, so an alert whose
expression holds is *pending* here, and pending counts as raised. "Quiet" is: every rule group
evaluated after the traffic with no evaluation error, and no alert pending or firing.

The checker is proven to bite in the same run: the planted file holds an alert that is true on
any traffic and a recording rule that fails to evaluate, and the healthy assertion expects the
checker to report exactly those two and nothing of the project's.

Phases, in file order (a counter's rate() remembers a fault for its window, so the store outage
comes last): healthy traffic + the monitoring pipeline; a canary that ranks backwards on 40% of
users + the monitoring pipeline (its analysis; the window holds unshifted traffic only); covariate
shift + the monitoring pipeline over a window of the shifted traffic alone; the online store
locked under traffic. After each fault the system is put back (the healthy drift report,
the canary rolled back) and every alert it raised must resolve. A fault may raise what healthy
traffic already raised (that is the healthy test's failure), and must add its own alert and no
other, except the alerts its own monitoring report calls for (retraining, prediction drift).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsd.registry import ModelRegistry
from tests.conftest import ROOT, SMALL, kedro_run, mlsd_cli, served_copy, short_tmp_dir
from tests.server import (
    LOG_DIR,
    Process,
    Server,
    free_port,
    get,
    logged_within,
    post,
    served_logged,
    serving,
    wait_until,
)
from tests.tools import required

PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
INTERVAL_S = 1  # scrape and rule evaluation interval: rate() has 2+ samples within seconds

pytestmark = pytest.mark.slow

# Rules of this test's own, loaded next to the project's: the checker must name exactly these.
PLANTED = {
    "groups": [
        {
            "name": "planted",
            "rules": [
                {"alert": "PlantedAlwaysTrue", "expr": "sum(mlsd_requests_total) > 0", "for": "10m"},
                # Every bucket series relabelled to le="all": duplicates, an evaluation error.
                {
                    "record": "planted:evaluation_error",
                    "expr": 'label_replace(mlsd_request_latency_seconds_bucket, "le", "all", "", "")',
                },
            ],
        }
    ]
}
PLANTED_PROBLEMS = {"PlantedAlwaysTrue", "planted:evaluation_error"}
REPORT = Path("data/08_reporting/drift.json")


class Exporter(Process):
    """`mlsd monitor exporter` of ``project`` on a free loopback port."""

    name, ready_path = "mlsd monitor exporter", "/metrics"

    def __init__(self, project: Path) -> None:
        port = free_port()
        command = [sys.executable, "-m", "mlsd.commands", "monitor", "exporter", "--port", str(port)]
        super().__init__(command, project, {}, project / f"exporter-{port}.log", port)


class Prometheus(Process):
    """Debian's `prometheus` with ``config``, its storage in ``folder``."""

    name, ready_path = "prometheus", "/-/ready"

    def __init__(self, config: Path, folder: Path) -> None:
        port = free_port()
        command = [
            required("prometheus", "prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]  # fmt: skip
        super().__init__(command, folder, {}, folder / "prometheus.log", port)

    def api(self, path: str) -> Any:
        status, text = get(f"{self.url}/api/v1/{path}", timeout=10)
        assert status == 200, text
        return json.loads(text)["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: each series' labels (without __name__) -> value."""
        from urllib.parse import quote

        out = {}
        for sample in self.api(f"query?query={quote(expr)}")["result"]:
            labels = {k: v for k, v in sample["metric"].items() if k not in ("__name__", "instance")}
            out[",".join(f"{k}={v}" for k, v in sorted(labels.items()))] = float(sample["value"][1])
        return out


def project_rule_files() -> list[Path]:
    """The rule files monitoring/prometheus/prometheus.yml loads, as they are in the project."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return [PROMETHEUS_DIR / name for name in config["rule_files"]]


def prometheus_config(folder: Path, ports: dict[str, int]) -> Path:
    """The project's prometheus.yml with ``ports[job]`` as each job's target, INTERVAL_S, its
    rule files at their paths in the project, and the planted rule file."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    interval = f"{INTERVAL_S}s"
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    planted = folder / "planted.yml"
    planted.write_text(yaml.safe_dump(PLANTED))
    config["rule_files"] = [str(path) for path in project_rule_files()] + [str(planted)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(ports), f"the scrape config's jobs changed: {sorted(jobs)}"
    for name, job in jobs.items():
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        for group in job["static_configs"]:
            group["targets"] = [f"127.0.0.1:{ports[name]}"]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run(
        [required("promtool", "prometheus"), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return path


# ---------------------------------------------------------------------------------------- checker


def _seconds(rfc3339: str) -> float:
    """Prometheus's timestamps (nanoseconds, Z) as epoch seconds."""
    from datetime import datetime

    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def rule_groups(prom: Prometheus) -> list[dict[str, Any]]:
    return list(prom.api("rules")["groups"])


def problems(prom: Prometheus) -> dict[str, str]:
    """Every rule that is not quiet: a pending or firing alert (its state, from /api/v1/alerts) or
    a rule whose last evaluation failed (its error, from /api/v1/rules); by rule name."""
    found = {alert["labels"]["alertname"]: alert["state"] for alert in prom.api("alerts")["alerts"]}
    for group in rule_groups(prom):
        for rule in group["rules"]:
            if rule["health"] == "err":
                found[rule["name"]] = f"evaluation error: {rule.get('lastError', '')}"
    return found


def settle(prom: Prometheus) -> None:
    """Return once every rule group has been evaluated after a scrape that followed the call:
    what Prometheus says then reflects what the targets served when the call was made."""
    start = time.time()
    wait_until(
        lambda: all(v > start for v in prom.query("timestamp(up)").values()) and len(prom.query("up")) == 2,
        60,
        "a scrape of both targets",
        every=0.2,
    )
    scraped = time.time()
    wait_until(
        lambda: all(_seconds(g["lastEvaluation"]) > scraped for g in rule_groups(prom)),
        60,
        "an evaluation of every rule group",
        every=0.2,
    )


def raised_now(prom: Prometheus) -> set[str]:
    """The problems once every group evaluated what the targets serve now, without the planted ones."""
    settle(prom)
    return problems(prom).keys() - PLANTED_PROBLEMS


def back_to(prom: Prometheus, before: set[str], timeout: float = 60) -> None:
    """Wait until the problems are ``before`` again (a fault's alerts resolved, no new one)."""
    deadline = time.monotonic() + timeout
    while (now := raised_now(prom)) != before:
        p99 = prom.query("mlsd:latency_p99_seconds:rate5m")
        assert time.monotonic() < deadline, f"still {sorted(now)} after {timeout} s, not {before}; p99 {p99}"
        # no sleep: raised_now waits for a scrape and an evaluation after the call (INTERVAL_S)


def raised(prom: Prometheus, names: set[str], timeout: float = 60) -> set[str]:
    """Wait until each alert in ``names`` is pending or firing, let every group evaluate once more,
    and return the problems then (without the planted ones)."""
    wait_until(lambda: names <= problems(prom).keys(), timeout, f"alerts {sorted(names)}", every=0.2)
    return raised_now(prom)


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _prometheus_installed() -> None:
    """A missing binary fails the module before any server starts (no skip)."""
    for binary in ("prometheus", "promtool"):
        required(binary, "prometheus")


@pytest.fixture(scope="module")
def project(built_project: Path) -> Iterator[Path]:
    root = short_tmp_dir()
    project = served_copy(built_project, root / "p")
    local = {
        # The canary phase decides on ~1,200 canary requests (~36 clicks at a 3% click rate).
        "canary_analysis": {"min_requests": 300, "min_feedback": 300, "min_positives": 10},
        "serving": {"reload_s": 0.2},
    }
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    yield project
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    with serving(project) as srv:
        yield srv


@pytest.fixture(scope="module")
def exporter(project: Path) -> Iterator[Exporter]:
    running = Exporter(project)
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def prometheus(server: Server, exporter: Exporter) -> Iterator[Prometheus]:
    folder = short_tmp_dir()
    config = prometheus_config(folder, {"mlsd-serving": server.port, "mlsd-drift": exporter.port})
    prom = Prometheus(config, folder)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()
        shutil.rmtree(folder, ignore_errors=True)


def simulate(project: Path, server: Server, scenario: str, count: int, seed: int, rate: int = 200) -> None:
    before = served_logged(project)
    result = mlsd_cli(
        project, "simulate", "--url", server.url, "--count", str(count), "--rate", str(rate),
        "--concurrency", "8", "--scenario", scenario, "--seed", str(seed), "--params", SMALL,
        timeout=60 + 5 * count / rate,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    logged_within(project, before, count)


def monitor(project: Path, *params: str) -> dict[str, Any]:
    extra = ("--params", ",".join(params)) if params else ()
    result = kedro_run(project, "--pipelines", "monitoring", *extra)
    assert result.returncode == 0, result.output[-4000:]
    return dict(json.loads((project / REPORT).read_text()))


def served_report(prom: Prometheus, report: dict[str, Any]) -> Callable[[], bool]:
    """True once Prometheus holds ``report`` as scraped from the exporter (its timestamp)."""
    from datetime import datetime

    generated = datetime.fromisoformat(report["generated_at"]).timestamp()

    def check() -> bool:
        served = prom.query("mlsd_drift_report_timestamp_seconds")
        return any(abs(value - generated) < 1 for value in served.values())

    return check


def summary(prom: Prometheus) -> str:
    """The recording rules' values and the rule states, for the test's output."""
    lines = []
    for group in rule_groups(prom):
        for rule in group["rules"]:
            if rule["type"] == "recording":
                lines.append(f"  {rule['name']} = {prom.query(rule['name'])} ({rule['health']})")
            else:
                lines.append(f"  {rule['name']}: {rule['state']} ({rule['health']})")
    lines.append(defaulted(prom))
    return "\n".join(lines)


def defaulted(prom: Prometheus) -> str:
    per_request = prom.query(
        "sum by (view, reason) (rate(mlsd_missing_features_total[10m]))"
        " / scalar(sum(rate(mlsd_requests_total[10m])))"
    )
    rounded = {key: round(value, 3) for key, value in per_request.items()}
    return f"  defaulted features per request (10 min) by view and reason: {rounded}"


# ---------------------------------------------------------------------------------------- tests


def test_healthy_traffic_raises_no_alert_and_every_rule_evaluates(
    project: Path, server: Server, prometheus: Prometheus
) -> None:
    started = time.time()
    simulate(project, server, "none", 1000, seed=1)
    report = monitor(project)
    wait_until(served_report(prometheus, report), 60, "the exporter's report in Prometheus", every=0.2)
    settle(prometheus)

    groups = rule_groups(prometheus)
    print("drift:", {c: round(v["score"], 3) for c, v in report["columns"].items()}, report["drifted_share"])
    print(f"rules after healthy traffic:\n{summary(prometheus)}")
    # Every rule of the project's files is loaded and was evaluated after the traffic.
    loaded = {(Path(g["file"]).name, r["name"]) for g in groups for r in g["rules"]}
    for path in project_rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert (path.name, rule.get("alert") or rule["record"]) in loaded
    assert all(_seconds(g["lastEvaluation"]) > started for g in groups)
    # rate() had samples: the recording rules over the service's counters have values.
    assert prometheus.query('mlsd:latency_p99_seconds:rate5m{variant="stable"}')
    assert prometheus.query("mlsd:missing_features_per_request:rate10m")
    assert prometheus.query("mlsd_drift_report_up") == {"job=mlsd-drift,problem=ad_click": 1.0}

    # The checker names the planted alert and the planted broken rule, and nothing of the project's.
    found = problems(prometheus)
    print("problems:", found)
    assert found.keys() == PLANTED_PROBLEMS, found
    assert found["PlantedAlwaysTrue"] == "pending"
    assert "same labelset" in found["planted:evaluation_error"]


def backwards_model(graph: bytes, center_logit: float) -> bytes:
    """``graph`` (a LightGBM tree ensemble) with every leaf value negated and the base moved to
    twice ``center_logit``: logit' = 2 * center - logit. Scores keep about the same spread around
    the same centre but rank requests backwards: a valid graph with the spec's inputs, and a worse
    model (holdout AUC about 0.33 where stable has 0.67)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(graph)
    (trees,) = [node for node in model.graph.node if node.op_type == "TreeEnsembleClassifier"]
    attributes = {attribute.name: attribute for attribute in trees.attribute}
    weights = attributes["class_weights"]
    weights.floats[:] = [-value for value in weights.floats]
    base = attributes["base_values"].floats[0] if "base_values" in attributes else 0.0
    if "base_values" in attributes:
        trees.attribute.remove(attributes["base_values"])
    trees.attribute.append(helper.make_attribute("base_values", [2 * center_logit - base]))
    return bytes(model.SerializeToString())


def served_logits(project: Path) -> list[float]:
    """logit(score) of every served request in the prediction log."""
    import math

    logits = []
    for path in (project / LOG_DIR).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("served", True) and 0 < record["score"] < 1:
                logits.append(math.log(record["score"] / (1 - record["score"])))
    return logits


def test_a_worse_canary_raises_the_canary_alert(
    project: Path, server: Server, prometheus: Prometheus
) -> None:
    import statistics

    before = raised_now(prometheus)
    healthy = (project / REPORT).read_bytes()
    registry = ModelRegistry(project / "data" / "06_models" / "bentoml", "ad_click")
    stable = (project / "data" / "06_models" / "candidate.onnx").read_bytes()  # stable's graph
    worse = registry.register(
        backwards_model(stable, statistics.median(served_logits(project))), {"note": "ranks backwards"}, {}
    )
    try:
        result = mlsd_cli(project, "rollout", "start", "--canary", worse, "--percent", "40")
        assert result.returncode == 0, result.stderr
        status, body = post(f"{server.url}/rollout", {})  # reload now rather than within reload_s
        assert status == 200, body
        assert body["canary"]["tag"] == worse
        simulate(project, server, "none", 3000, seed=4, rate=300)
        report = monitor(project)  # the window holds the healthy and the canary traffic
        verdict = json.loads((project / "data" / "08_reporting" / "canary_analysis.json").read_text())
        print("canary verdict:", verdict["decision"], verdict["reasons"])
        wait_until(served_report(prometheus, report), 60, "the canary's report in Prometheus", every=0.2)

        expected = {"MlsdCanaryQualityWorse"}
        expected |= {"MlsdRetrainNeeded"} if report["retrain"]["needed"] else set()
        expected |= {"MlsdPredictionDrift"} if report["prediction"].get("detected") else set()
        found = raised(prometheus, {"MlsdCanaryQualityWorse"})
        p99 = prometheus.query("mlsd:latency_p99_seconds:rate5m")
        cpu = prometheus.query("mlsd:model_cpu_p99_seconds:rate5m")
        own = {arm: verdict[arm]["p99_ms"] for arm in ("stable", "canary")}
        bounds = {k: verdict["tests"].get(k) for k in ("p99_ms_canary_lower", "p99_ms_stable_upper")}
        print("raised:", sorted(found), "score drift:", report["prediction"].get("score"))
        print("request p99 (s):", p99, "model call CPU p99 (s):", cpu)
        print("analysis: model_cpu_ms p99 (ms):", own, "bounds:", bounds, "failed:", verdict["failed"])
        print(defaulted(prometheus))
        assert not expected & before, before
        assert found - before == expected, (found, before)
        # The backwards model costs exactly what stable costs: the analysis agrees with the alert.
        assert "latency" not in verdict["failed"], verdict["reasons"]
    finally:
        mlsd_cli(project, "rollout", "rollback")
        post(f"{server.url}/rollout", {})
        (project / REPORT).write_bytes(healthy)
    back_to(prometheus, before)


def test_covariate_shift_raises_the_drift_alert(
    project: Path, server: Server, prometheus: Prometheus
) -> None:
    # What healthy traffic raised already is the healthy test's failure; a fault adds its own.
    before = raised_now(prometheus)
    healthy = (project / REPORT).read_bytes()
    try:
        start = time.time()  # every earlier request is logged (simulate waits for it): none after this
        simulate(project, server, "covariate_shift", 1000, seed=2)
        report = monitor(project, f"monitoring.since={start}")  # the shifted traffic, and nothing else
        assert report["rows"]["current"] == 1000, (report["window"], "the window missed shifted traffic")
        wait_until(served_report(prometheus, report), 60, "the shifted report in Prometheus", every=0.2)

        expected = {"MlsdDriftShareHigh"}
        expected |= {"MlsdRetrainNeeded"} if report["retrain"]["needed"] else set()  # data drift says so
        expected |= {"MlsdPredictionDrift"} if report["prediction"].get("detected") else set()
        found = raised(prometheus, {"MlsdDriftShareHigh"})
        print("drifted:", report["drifted_columns"], report["drifted_share"], "raised:", sorted(found))
        print(defaulted(prometheus))
        assert not expected & before, before
        assert found - before == expected, (found, before)
    finally:
        # The healthy report back (as a monitoring run on calm traffic would write): the drift
        # alerts resolve before the next fault.
        (project / REPORT).write_bytes(healthy)
    back_to(prometheus, before)


def test_a_locked_online_store_raises_online_store_down(
    project: Path, server: Server, prometheus: Prometheus
) -> None:
    before = raised_now(prometheus)
    # The embedded store is SQLite: an exclusive lock held elsewhere makes the service's reads wait
    # past online_timeout_ms (counted in mlsd_online_store_errors_total), as a hung store would.
    lock = sqlite3.connect(project / "data" / "feast" / "online_store.db", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        # Long enough for several scrapes to see the error counter grow (rate() needs two).
        simulate(project, server, "none", 600, seed=3, rate=100)
        found = raised(prometheus, {"MlsdOnlineStoreDown"})
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    errors = prometheus.query("sum(rate(mlsd_online_store_errors_total[5m]))")
    print("raised:", sorted(found), "store errors/s:", errors)
    print(defaulted(prometheus))
    assert "MlsdOnlineStoreDown" not in before, before
    # Every stored feature is served as its default meanwhile: MlsdMissingFeaturesHigh is the same
    # outage seen from the features' side, so it may be raised too; nothing else may.
    assert found - before - {"MlsdMissingFeaturesHigh"} == {"MlsdOnlineStoreDown"}, (found, before)
