"""A real `bentoml serve` of the project's deployment/ on a free loopback port, for tests and bench."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlsd.telemetry import TELEMETRY_OFF

LOG_DIR = Path("data/07_model_output/predictions")
"""A project's prediction log (conf serving.log_dir)."""


def served_logged(project: Path) -> int:
    """How many served requests the project's prediction log holds (on disk once flushed)."""
    from mlsd.serving.prediction_log import read_log

    folder = project / LOG_DIR
    return sum(1 for record in read_log(folder) if record["served"]) if folder.exists() else 0


def logged_within(project: Path, before: int, count: int, timeout: float = 30) -> None:
    """Wait until ``count`` served requests beyond ``before`` are in the prediction log: it is
    written within serving.flush_ms, and a fixed sleep was either too long or too short."""
    wait_until(lambda: served_logged(project) >= before + count, timeout, f"{count} served requests logged")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout``
    seconds, saying ``what`` did not happen: a wait that ends as soon as the condition holds,
    where a fixed sleep is either too long on a quiet machine or too short on a loaded one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, body: Any, timeout: float = 30, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON (or raw bytes/str); return the status and the decoded JSON answer.

    A server may answer (a 413, say) and close before it read the whole body; the send then
    fails with a broken pipe, but the answer is already in the socket buffer and is read.
    """
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sent = {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", path, body=data, headers=sent)
        response = conn.getresponse()
        status, text = response.status, response.read()
    finally:
        conn.close()
    try:
        return status, json.loads(text or b"null")
    except ValueError:
        return status, text.decode(errors="replace")


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def metric(server: Server, name: str, absent: float | None = None, **labels: str) -> float:
    """The value of one Prometheus sample on /metrics (summed over worker pid labels); ``absent``
    when no sample matches (default: that fails the test)."""
    text = get(f"{server.url}/metrics")[1]
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, found = total + float(match[2]), True
    if not found and absent is not None:
        return absent
    assert found, f"{name}{labels} not on /metrics"
    return total


class Process:
    """A server command on a free loopback port, its output in ``log``; ``stop()`` sends SIGTERM
    (a clean shutdown) and kills the process group if it is stuck.

    Subclasses give ``name`` and ``ready_path`` (answers 200 once the server is up)."""

    name = "server"
    ready_path = "/"

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path, port: int) -> None:
        self.port, self.url, self.output = port, f"http://127.0.0.1:{port}", log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **TELEMETRY_OFF, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError):
                if get(f"{self.url}{self.ready_path}", timeout=2)[0] == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {timeout} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait for the clean shutdown (hooks run, logs flushed); SIGKILL the group if stuck."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers, if any
        self._log.close()
        return int(self.proc.returncode)


class Server(Process):
    """`bentoml serve TARGET` in ``project`` (default: deployment/, the scoring service)."""

    name, ready_path = "bentoml serve", "/readyz"

    def __init__(
        self,
        project: Path,
        env: dict[str, str] | None = None,
        target: str = "deployment",
        python: Path | None = None,
    ) -> None:
        self.project, port = project, free_port()
        own = [str(Path(sys.executable).with_name("bentoml"))]
        bentoml = own if python is None else [str(python), "-m", "bentoml"]
        command = [
            *bentoml, "serve", target, "--working-dir", ".", "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        full_env = {
            "MLSD_PROJECT_DIR": str(project),
            "BENTOML_HOME": str(project / ".bentoml"),
            **(env or {}),
        }
        super().__init__(command, project, full_env, project / f"serve-{port}.log", port)


@contextlib.contextmanager
def serving(project: Path, env: dict[str, str] | None = None, python: Path | None = None) -> Iterator[Server]:
    """A ready `bentoml serve` of ``project``'s deployment/ (with ``python``'s bentoml, default this
    interpreter's), stopped (SIGTERM) on exit."""
    srv = Server(project, env, python=python)
    srv.wait_ready()
    try:
        yield srv
    finally:
        srv.stop()
