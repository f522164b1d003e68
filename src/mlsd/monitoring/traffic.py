"""Simulated traffic for a running scoring service, and the delayed feedback it would get.

``mlsd simulate`` draws requests from the problem's generator (``simulate`` in the problem
module), sends them to a service on this machine at a fixed rate, and writes one feedback record
per answered request: ``request_id`` (joins the prediction log), ``label`` drawn from the
generator's true probability, ``true_p`` and ``feedback_ts`` (when the outcome became known).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

from mlsd.errors import ConfigError

MAX_COUNT = 1_000_000
MAX_RATE = 5_000.0
MAX_CONCURRENCY = 64


def loopback(url: str) -> tuple[str, int]:
    """Host and port of ``url``, which must name this machine (the simulator never leaves it).

    Raises:
        ConfigError: the URL is not http://<loopback>:<port>.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if parts.scheme != "http" or not is_loopback:
        raise ConfigError(f"--url {url!r}: the simulator only sends to http://127.0.0.1:<port> (loopback)")
    return host, parts.port or 80


@dataclass
class Sent:
    """What happened to the simulated requests."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # indices with a 200
    wall_s: float = 0.0


def send(
    url: str,
    requests: Sequence[dict[str, Any]],
    rate: float,
    concurrency: int,
    progress: TextIO | None = sys.stderr,
    token: str | None = None,
) -> Sent:
    """POST every request to ``url``/predict at ``rate`` per second over ``concurrency`` connections
    (with ``Authorization: Bearer token`` when the service requires one)."""
    host, port = loopback(url)
    if not 0 < rate <= MAX_RATE or not 1 <= concurrency <= MAX_CONCURRENCY or len(requests) > MAX_COUNT:
        raise ConfigError(
            f"rate must be in (0, {MAX_RATE}], concurrency in [1, {MAX_CONCURRENCY}], count <= {MAX_COUNT}"
        )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    sent, lock, cursor = Sent(), threading.Lock(), iter(range(len(requests)))
    start = time.perf_counter()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                body = json.dumps(requests[i]).encode()
                conn.request("POST", "/predict", body, headers)
                response = conn.getresponse()
                response.read()
                status: int | None = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = None
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                with lock:
                    sent.errors.append(f"request {i}: {exc}")
            with lock:
                if status is not None:
                    sent.statuses[status] += 1
                if status == 200:
                    sent.answered.append(i)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.25)
        if progress is not None:
            _show(progress, sent, len(requests), time.perf_counter() - start)
    sent.wall_s = time.perf_counter() - start
    if progress is not None:
        _show(progress, sent, len(requests), sent.wall_s)
        progress.write("\n")
    return sent


def _show(out: TextIO, sent: Sent, total: int, elapsed: float) -> None:
    done = sum(sent.statuses.values()) + len(sent.errors)
    width = 30
    bar = "#" * int(width * done / max(total, 1))
    failed = done - len(sent.answered)
    out.write(f"\r[{bar:<{width}}] {done}/{total}  {done / max(elapsed, 1e-9):7.1f} req/s  {failed} errors")
    out.flush()


def feedback_records(
    requests: Sequence[dict[str, Any]], true_p: np.ndarray, answered: Sequence[int], seed: int, delay_s: float
) -> list[dict[str, Any]]:
    """One outcome per answered request: label ~ Bernoulli(true_p), known ``delay_s`` later (mean).

    A multi-label ``true_p`` (``[requests, classes]``) draws every class; the record's ``label`` is
    the share of classes that apply (what the served ``score``, the mean class score, estimates)
    and ``labels`` lists each class's outcome.

    The labels get a random stream of their own: a problem's ``simulate`` draws the requests from
    ``default_rng(seed)``, and reusing its uniforms would tie each label to who sent the request
    (``rng.choice`` picks users by the same uniforms), so an arm of users would see far more or
    fewer clicks than their true probability says.
    """
    rng = np.random.default_rng([seed, 0xFEED])
    now = datetime.now(UTC)
    labels = rng.random(np.shape(true_p)) < true_p
    delays = rng.exponential(delay_s, len(requests))
    per_class = labels.ndim == 2
    label = labels.mean(axis=1) if per_class else labels.astype(int)
    truth = true_p.mean(axis=1) if per_class else true_p
    return [
        {
            "request_id": requests[i]["request_id"],
            "label": float(label[i]) if per_class else int(label[i]),
            **({"labels": labels[i].astype(int).tolist()} if per_class else {}),
            "true_p": float(truth[i]),
            "feedback_ts": (now + timedelta(seconds=float(delays[i]))).isoformat(timespec="milliseconds"),
        }
        for i in sorted(answered)
    ]


def write_feedback(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append the records to a JSONL feedback log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
