"""Load and soak: one real `bentoml serve` held at fixed request rates, and what it lost.

Phases against the same server (ad_click, stable only, 1 worker):

  light: LIGHT_RPS for LIGHT_S seconds, the baseline of the same run;
  load:  LOAD_RPS for LOAD_S seconds;
  soak:  SOAK_RPS for SOAK_S seconds (``--soak-s 0`` skips it; `make bench` runs 600 s).

The client is open-loop: request k is due at ``start + k / rate`` and its latency counts from
then, so a server that falls behind shows it in p99 instead of slowing the client down
(coordinated omission). CONCURRENCY keep-alive connections send the due requests; every request
has its own request_id. Server memory is the RSS of the `bentoml serve` process tree, sampled
every RSS_EVERY_S. After the last phase the server gets SIGTERM; then its prediction log is read:
every answered request must be there (lost = answered - logged, the goal is 0).

Run: .venv/bin/python bench/bench_load.py [--load-rps 200] [--load-s 60] [--soak-s 600]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import Server

from bench_serving import bodies, project_copy
from mlsd.serving.prediction_log import read_log
from mlsd.telemetry import TELEMETRY_OFF
from report import busy_cores, write

LIGHT_RPS, LIGHT_S = 20, 20
CONCURRENCY = 32
RSS_EVERY_S = 5.0
LOG_DIR = "data/07_model_output/predictions"


@dataclass
class Phase:
    """What one phase sent and got back."""

    name: str
    rate: float
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, float]:
        ms = np.array(self.latencies_ms or [np.nan])
        return {
            f"{self.name}_sent": self.sent,
            f"{self.name}_errors": len(self.errors),
            f"{self.name}_achieved_rps": round(len(self.answered) / max(self.elapsed_s, 1e-9), 1),
            f"{self.name}_p50_ms": round(float(np.percentile(ms, 50)), 2),
            f"{self.name}_p99_ms": round(float(np.percentile(ms, 99)), 2),
            f"{self.name}_max_ms": round(float(ms.max()), 2),
        }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def run_phase(port: int, payloads: list[dict[str, object]], phase: Phase, prefix: str) -> None:
    """Send ``phase.rate`` requests a second for ``phase.seconds`` from CONCURRENCY connections."""
    total = int(phase.rate * phase.seconds)
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter() + 0.2

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            due = start + k / phase.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            request_id = f"{prefix}-{k}"
            body = json.dumps({**payloads[k % len(payloads)], "request_id": request_id})
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200
                problem = "" if ok else f"HTTP {response.status}: {data[:200]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            latency = (time.perf_counter() - due) * 1000
            with lock:
                phase.sent += 1
                if ok:
                    phase.latencies_ms.append(latency)
                    phase.answered.append(request_id)
                else:
                    phase.errors.append(problem)

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.elapsed_s = time.perf_counter() - start
    print(phase.name, phase.summary(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-rps", type=float, default=200)
    parser.add_argument("--load-s", type=float, default=60)
    parser.add_argument("--soak-rps", type=float, default=100)
    parser.add_argument("--soak-s", type=float, default=600)
    args = parser.parse_args()
    os.environ.update(TELEMETRY_OFF)
    busy = busy_cores()
    phases = [Phase("light", LIGHT_RPS, LIGHT_S), Phase("load", args.load_rps, args.load_s)]
    if args.soak_s > 0:
        phases.append(Phase("soak", args.soak_rps, args.soak_s))
    rss: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="mlsd-load-") as tmp:
        project = project_copy(Path(tmp) / "p")
        (project / "deployment" / "rollout.yaml").write_text(yaml.safe_dump({"stable": None}))
        payloads = [json.loads(b) for b in bodies(project)[0]]
        server = Server(project)
        sampling = threading.Event()
        try:
            server.wait_ready()
            t0 = time.perf_counter()

            def sample() -> None:
                while not sampling.wait(RSS_EVERY_S):
                    rss.append((time.perf_counter() - t0, tree_rss_mb(server.proc.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            rss.append((0.0, tree_rss_mb(server.proc.pid)))
            sampler.start()
            for phase in phases:
                run_phase(server.port, payloads, phase, phase.name)
            sampling.set()
            rss.append((time.perf_counter() - t0, tree_rss_mb(server.proc.pid)))
        finally:
            sampling.set()
            exit_code = server.stop()
        logged = {r["request_id"] for r in read_log(project / LOG_DIR) if r.get("served", True)}
    answered = {rid for phase in phases for rid in phase.answered}
    warm = next((mb for t, mb in rss if t >= LIGHT_S), rss[0][1])  # after the light phase warmed it
    results: dict[str, float] = {}
    for phase in phases:
        results.update(phase.summary())
    results.update(
        {
            "requests_sent": sum(p.sent for p in phases),
            "requests_answered": len(answered),
            "log_records": len(logged & answered),
            "records_lost": len(answered - logged),
            "rss_start_mb": round(rss[0][1], 1),
            "rss_warm_mb": round(warm, 1),
            "rss_end_mb": round(rss[-1][1], 1),
            "rss_growth_after_warmup_mb": round(rss[-1][1] - warm, 1),
            "server_exit_code": exit_code,
        }
    )
    ratios = {
        "load_p99_over_light_p99": round(results["load_p99_ms"] / results["light_p99_ms"], 2),
        "logged_over_answered": round(len(logged & answered) / max(len(answered), 1), 4),
        "rss_end_over_warm": round(rss[-1][1] / warm, 3),
    }
    soak = phases[-1] if phases[-1].name == "soak" else None
    summary = (
        f"One `bentoml serve` (ad_click, stable only, 1 worker) held open-loop at {LIGHT_RPS} req/s for "
        f"{LIGHT_S:.0f} s (the baseline), {args.load_rps:.0f} req/s for {args.load_s:.0f} s"
        + (f" and {args.soak_rps:.0f} req/s for {args.soak_s:.0f} s (soak)" if soak else "")
        + f", {CONCURRENCY} keep-alive client connections on the same cores. Load: "
        f"{results['load_achieved_rps']:.0f} req/s answered, {results['load_errors']:.0f} errors, "
        f"p99 {results['load_p99_ms']:.1f} ms ({ratios['load_p99_over_light_p99']:.1f}x the light phase's). "
        + (
            f"Soak: {results['soak_errors']:.0f} errors, p99 {results['soak_p99_ms']:.1f} ms. "
            if soak
            else ""
        )
        + f"Server memory {results['rss_warm_mb']:.0f} MiB after warm-up, {results['rss_end_mb']:.0f} MiB at "
        f"the end ({results['rss_growth_after_warmup_mb']:+.0f} MiB). After SIGTERM (exit "
        f"{exit_code}) the prediction log held {results['log_records']:.0f} of the "
        f"{results['requests_answered']:.0f} answered requests: {results['records_lost']:.0f} lost."
    )
    write(
        "load",
        "make bench (.venv/bin/python bench/bench_load.py"
        + (f" --soak-s {args.soak_s:.0f}" if soak else " --soak-s 0")
        + ")",
        {
            "light_rps": LIGHT_RPS,
            "light_s": LIGHT_S,
            "load_rps": args.load_rps,
            "load_s": args.load_s,
            "soak_rps": args.soak_rps if soak else 0,
            "soak_s": args.soak_s if soak else 0,
            "concurrency": CONCURRENCY,
            "workers": 1,
            "client": "open loop, python http.client keep-alive, same machine",
            "busy_cores_before": round(busy, 2),
            "loadavg_15m_at_end": round(os.getloadavg()[2], 2),  # other work beside the run shows here
        },
        results,
        ratios,
        summary,
    )
    print(summary)


if __name__ == "__main__":
    main()
