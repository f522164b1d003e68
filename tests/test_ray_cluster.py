"""Training through a real two-node Ray cluster, joined by RAY_ADDRESS: the code path users take
when they outgrow the local Ray, with the commands the README's "Training on a Ray cluster" shows.

Both nodes run the README's `ray start` lines with `--block` (as the README advises, so each
node is stopped by its own PID: its `ray stop` would stop every Ray on the machine) on a free
port, with a temp dir and a small object store of their own; the training line runs as written
but for the head's address."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TELEMETRY_OFF, short_tmp_dir
from tests.doc_commands import doc_commands
from tests.server import wait_until

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
README_RAY = [
    c.text for c in doc_commands(ROOT / "README.md", ROOT) if re.search(r"(^|/)ray |RAY_ADDRESS=", c.text)
]
"""The README's cluster commands: start the head, start a worker, train through the cluster, stop."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive_nodes(address: str) -> int:
    status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, timeout=60)
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return active.count("node_")


def readme_command(role: str) -> str:
    """The README's command for ``role``: head, worker, train or stop."""
    patterns = {
        "head": r"\.venv/bin/ray start --head .*",
        "worker": r"\.venv/bin/ray start --address=.*",
        "train": r"RAY_ADDRESS=\S+ \.venv/bin/kedro run .*",
        "stop": r"\.venv/bin/ray stop",
    }
    found = [text for text in README_RAY if re.fullmatch(patterns[role], text)]
    assert len(found) == 1, f"the README's Ray section should show one {role} command: {README_RAY}"
    return found[0]


def _start(command: str, address: str, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The README's `ray start` line ``command`` with the head at ``address``, blocking, plus ``extra``."""
    port = address.split(":")[1]
    args = shlex.split(re.sub(r"<head>:\d+", address, re.sub(r"--port=\d+", f"--port={port}", command)))
    assert args[:2] == [".venv/bin/ray", "start"], command
    env = {**os.environ, **TELEMETRY_OFF}
    with log.open("wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", *args[2:], *extra],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    """A head and a worker node, one CPU each, on loopback; yields the head's address."""
    root = short_tmp_dir()
    address = f"127.0.0.1:{_free_port()}"
    own = ["--object-store-memory=100000000"]
    procs = [_start(readme_command("head"), address, [*own, f"--temp-dir={root}/h"], root / "head.log")]
    try:
        # every=0.5: each poll is a `ray status` run of its own (about a second)
        wait_until(lambda: _alive_nodes(address) >= 1, 90, "the head node alive", every=0.5)
        procs.append(
            _start(readme_command("worker"), address, [*own, f"--temp-dir={root}/w"], root / "worker.log")
        )
        wait_until(lambda: _alive_nodes(address) >= 2, 90, "the worker node alive", every=0.5)
        assert _alive_nodes(address) == 2, (root / "worker.log").read_text()[-2000:]
        yield address
    finally:
        # `ray start --block` stops its node's processes on SIGTERM; whatever outlives the grace
        # period is killed with its whole process group (each node was started in its own).
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def test_training_joins_the_cluster_named_by_ray_address_and_uses_both_nodes(
    project_copy: Path, two_node_cluster: str
) -> None:
    (project_copy / ".venv").symlink_to(sys.prefix)  # the reader's venv
    train = re.sub(r"<head>:\d+", two_node_cluster, readme_command("train"))
    result = subprocess.run(
        ["bash", "-c", train], cwd=project_copy, env={**os.environ, **TELEMETRY_OFF, "COLUMNS": "250"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert result.returncode == 0, f"`{train}`:\n{(result.stdout + result.stderr)[-3000:]}"
    training = json.loads((project_copy / "data" / "08_reporting" / "training.json").read_text())
    assert len(training["workers"]) == 2
    assert len(training["nodes"]) == 2, training["workers"]  # one worker on each node
    # Nothing started a private local Ray: no session under the project's own .ray/.
    assert not list((project_copy / ".ray").glob("session_*"))
