"""Shared fixtures: telemetry off, an isolated copy of the project, real local services.

Pipeline tests never touch the repository's own data/: they copy the project (pyproject, conf,
feature_repo) into a tmp dir and run the real `kedro run` there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TELEMETRY_OFF = {
    "KEDRO_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "GX_ANALYTICS_ENABLED": "false",
}
# Small but realistic: 20k impressions, ~1k users, 50 ads, 14 days.
SMALL = "generator.n_impressions=20000"
REDIS_TEST_DB = 11  # the test suite owns this Redis database index and empties it


@pytest.fixture(autouse=True, scope="session")
def _telemetry_off() -> None:
    os.environ.update(TELEMETRY_OFF)


@dataclass
class KedroResult:
    returncode: int
    output: str

    @property
    def text(self) -> str:
        """Output with Rich's boxes and wrapping removed, for matching messages."""
        return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", self.output))


def copy_project(dest: Path) -> Path:
    """A runnable copy of the project's configuration (no data) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("credentials.yml"))
    shutil.copytree(
        ROOT / "feature_repo", dest / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    (dest / "data").mkdir(exist_ok=True)
    (dest / "src").mkdir(exist_ok=True)  # Kedro requires it; mlsd itself is the installed package
    return dest


def kedro_run(project: Path, *args: str, env: dict[str, str] | None = None) -> KedroResult:
    """Run the real `kedro run` in ``project`` and capture what it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        env={**os.environ, **TELEMETRY_OFF, "COLUMNS": "250", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return KedroResult(proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project on which the whole default pipeline ran once, on small data."""
    project = copy_project(tmp_path_factory.mktemp("built") / "project")
    result = kedro_run(project, "--params", SMALL)
    assert result.returncode == 0, result.output[-4000:]
    return project


@pytest.fixture
def project_copy(built_project: Path, tmp_path: Path) -> Path:
    """A private copy of the built project (data included) a test may change."""
    return Path(shutil.copytree(built_project, tmp_path / "project"))


def _services_required() -> bool:
    return os.environ.get("MLSD_SKIP_SERVICES") != "1"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    if not _services_required():
        pytest.skip("MLSD_SKIP_SERVICES=1")
    name = f"mlsd_test_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}); start it (see .ci/run)")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis on 127.0.0.1:6379, database REDIS_TEST_DB, emptied before and after."""
    redis = pytest.importorskip("redis")
    if not _services_required():
        pytest.skip("MLSD_SKIP_SERVICES=1")
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable on 127.0.0.1:6379 ({exc}); start it (see .ci/run)")
    yield f"127.0.0.1:6379,db={REDIS_TEST_DB}"
    client.flushdb()
    client.close()
