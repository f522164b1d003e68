"""`mlsd simulate` against a real `bentoml serve`: traffic per scenario and feedback that joins."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlsd.serving.prediction_log import read_log
from tests.conftest import SMALL, mlsd_cli, served_copy, short_tmp_dir
from tests.server import LOG_DIR, Server, serving


@pytest.fixture(scope="module")
def project(built_project: Path) -> Iterator[Path]:
    root = short_tmp_dir()
    yield served_copy(built_project, root / "p")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    with serving(project) as srv:
        yield srv


def simulate(
    project: Path, server: Server, scenario: str, count: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the CLI; return its summary and the feedback it wrote."""
    feedback = project / f"feedback-{scenario}-{seed}.jsonl"
    result = mlsd_cli(
        project, "simulate", "--url", server.url, "--count", str(count), "--rate", "400",
        "--scenario", scenario, "--seed", str(seed), "--feedback", str(feedback), "--params", SMALL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count}/{count}" in result.stderr  # the progress bar reached the end
    lines = feedback.read_text().splitlines()
    return json.loads(result.stdout), [json.loads(line) for line in lines]


def served(project: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        records = {r["request_id"]: r for r in read_log(project / LOG_DIR) if r["request_id"] in ids}
        if len(records) == len(ids) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_feedback_joins_the_prediction_log_one_to_one(project: Path, server: Server) -> None:
    summary, feedback = simulate(project, server, "none", 400, seed=1)
    assert summary["answered"] == 400
    ids = {f["request_id"] for f in feedback}
    assert len(ids) == 400
    records = served(project, ids)
    assert set(records) == ids
    # Users and ads of the trained world: their profiles are known (a user-category pair may be new).
    assert not any({"age", "device", "ad_ctr_7d"} & set(r["missing"]) for r in records.values())
    labels = np.array([f["label"] for f in feedback])
    true_p = np.array([f["true_p"] for f in feedback])
    assert abs(labels.mean() - true_p.mean()) < 4 * np.sqrt(true_p.mean() / 400)
    assert 0.01 < true_p.mean() < 0.06


def test_covariate_shift_moves_the_shifted_inputs_only(project: Path, server: Server) -> None:
    base = served(project, {f["request_id"] for f in simulate(project, server, "none", 600, seed=2)[1]})
    shifted = served(
        project, {f["request_id"] for f in simulate(project, server, "covariate_shift", 600, seed=2)[1]}
    )

    def mean(records: dict[str, dict[str, Any]], name: str) -> float:
        return float(np.mean([r["features"][name] for r in records.values()]))

    def share(records: dict[str, dict[str, Any]], name: str, value: str) -> float:
        return float(np.mean([r["features"][name] == value for r in records.values()]))

    assert mean(shifted, "age") > mean(base, "age") + 5
    assert share(shifted, "device", "desktop") > share(base, "device", "desktop") + 0.15
    assert mean(shifted, "position") > mean(base, "position") + 0.5
    assert abs(mean(shifted, "hour") - mean(base, "hour")) < 1.5


def test_new_entities_are_served_with_defaults_and_flagged(project: Path, server: Server) -> None:
    _, feedback = simulate(project, server, "new_entities", 50, seed=3)
    records = served(project, {f["request_id"] for f in feedback})
    assert len(records) == 50
    assert all({"age", "user_ctr_7d"} <= set(r["missing"]) for r in records.values())


def test_the_simulator_stays_on_this_machine(project: Path) -> None:
    result = mlsd_cli(project, "simulate", "--url", "http://10.1.2.3:3000", "--count", "5")
    assert result.returncode == 2
    assert "loopback" in result.stderr
    bad = mlsd_cli(project, "simulate", "--count", "5", "--params", "seed=3")
    assert bad.returncode == 2
    assert "generator.KEY=VALUE" in bad.stderr
