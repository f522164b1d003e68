"""Training through a real two-node Ray cluster, joined by RAY_ADDRESS: the code path users take
when they outgrow the local Ray. Both nodes are `ray start --block` processes torn down by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TELEMETRY_OFF, kedro_run, short_tmp_dir

pytestmark = pytest.mark.slow
RAY = str(Path(os.sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive_nodes(address: str) -> int:
    status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, timeout=60)
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return active.count("node_")


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **TELEMETRY_OFF}
    with log.open("wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", *args], stdout=out, stderr=out, env=env, start_new_session=True
        )


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    """A head and a worker node, one CPU each, on loopback; yields the head's address."""
    root = short_tmp_dir()
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    procs = [
        _start(
            [
                "--head",
                f"--port={address.split(':')[1]}",
                "--include-dashboard=false",
                f"--temp-dir={root}/h",
                *common,
            ],
            root / "head.log",
        )
    ]
    try:
        deadline = time.monotonic() + 90
        while _alive_nodes(address) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        procs.append(_start([f"--address={address}", f"--temp-dir={root}/w", *common], root / "worker.log"))
        while _alive_nodes(address) < 2 and time.monotonic() < deadline:
            time.sleep(1)
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
    result = kedro_run(project_copy, "--pipeline", "train", env={"RAY_ADDRESS": two_node_cluster})

    assert result.returncode == 0, result.output[-3000:]
    training = json.loads((project_copy / "data" / "08_reporting" / "training.json").read_text())
    assert len(training["workers"]) == 2
    assert len(training["nodes"]) == 2, training["workers"]  # one worker on each node
    # Nothing started a private local Ray: no session under the project's own .ray/.
    assert not list((project_copy / ".ray").glob("session_*"))
