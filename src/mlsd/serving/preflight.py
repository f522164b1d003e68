"""What the scoring service checks before it opens anything, so a misconfigured server does not
start and answer /readyz 200 while every request is scored on defaults (:func:`check_service`).

- ``serving.auth_token_env`` names a variable that is set (:meth:`ServiceConfig.auth_token`).

- :func:`online_store_address`: every ``$VARIABLE`` the profile's Feast yaml reads (the production
  profile's ``MLSD_REDIS_URL`` and ``MLSD_FEAST_REGISTRY_URL``) is set and well-formed; the
  error names the variable and shows a valid value. Returns where the online store listens, so
  the server can tell a store it cannot reach (``unavailable``) from a slow one (``timeout``).
- :func:`own_metrics_dir`: each server keeps its Prometheus multiprocess files in a folder of its
  own inside the project. BentoML keeps them under its home (default ``~/bentoml``, one per user)
  and wipes them when a server starts: two projects served on one machine would wipe and read
  each other's /metrics.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsd.errors import ConfigError

if TYPE_CHECKING:
    from mlsd.serving.app import ServiceConfig

VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
"""A reference Feast expands (``os.path.expandvars``): ``${NAME}`` or ``$NAME``."""

EXAMPLES = {
    "online_store.connection_string": "host:port[,db=N][,password=...], e.g. 127.0.0.1:6379,db=0",
    "registry.path": "a SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/feast",
}


@dataclass(frozen=True)
class StoreAddress:
    """Where a networked online store listens, and the variable that said so."""

    kind: str
    nodes: tuple[tuple[str, int], ...]
    variable: str | None = None

    def __str__(self) -> str:
        where = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{self.kind} at {where}" + (f" (${self.variable})" if self.variable else "")

    def unreachable(self, timeout_s: float) -> str | None:
        """Why no node takes a TCP connection within ``timeout_s`` (None: one does)."""
        problems = []
        for host, port in self.nodes:
            try:
                with socket.create_connection((host, port), timeout=timeout_s):
                    return None
            except OSError as exc:
                problems.append(f"{host}:{port}: {exc.strerror or exc}")
        return "; ".join(problems)


def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string value of a YAML tree with its dotted key."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}.{i}")
    elif isinstance(node, str):
        yield where, node


def _redis_nodes(value: str, source: str) -> tuple[tuple[str, int], ...]:
    """The host:port parts of a Feast Redis connection string (options are ``key=value``)."""
    nodes = []
    for part in value.split(","):
        part = part.strip()
        if "=" in part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"{source} has {part!r} where host:port belongs; expected "
                f"{EXAMPLES['online_store.connection_string']}"
            )
        nodes.append((host, int(port)))
    if not nodes:
        raise ConfigError(
            f"{source} names no host:port; expected {EXAMPLES['online_store.connection_string']}"
        )
    return tuple(nodes)


def online_store_address(config: ServiceConfig) -> StoreAddress | None:
    """Check the variables of the profile's Feast yaml; where the online store listens.

    Returns:
        The address of a Redis online store; None for a file store (SQLite) or one of another kind.

    Raises:
        ConfigError: a variable the yaml reads is unset or empty, or its value is malformed; the
            message names the variable, the yaml key and a valid value.
    """
    import yaml

    from mlsd.features import FeatureStoreParams

    params = FeatureStoreParams.model_validate(dict(config.parameters.get("feature_store") or {}))
    path = config.path(params.repo_path) / params.config_file
    if not path.is_file():
        return None  # build_scorer's open_store names the missing file
    raw = yaml.safe_load(path.read_text()) or {}
    sources: dict[str, str] = {}  # yaml key -> the variable it reads
    for where, value in _strings(raw):
        for match in VARIABLE.finditer(value):
            name = match[1] or match[2]
            sources[where] = name
            if not os.environ.get(name):
                raise ConfigError(
                    f"{path.name}: {where} reads ${name}, which is not set: export {name} before serving "
                    f"({EXAMPLES.get(where, 'see the comments in ' + path.name)})"
                )
    expanded = yaml.safe_load(os.path.expandvars(path.read_text())) or {}

    def source(key: str) -> str:
        return f"${sources[key]} ({path.name}: {key})" if key in sources else f"{path.name}: {key}"

    registry = expanded.get("registry")
    if isinstance(registry, dict) and registry.get("registry_type") == "sql":
        from sqlalchemy.engine import make_url

        try:
            make_url(str(registry.get("path", "")))
        except Exception as exc:  # ArgumentError / ValueError; the value may hold a password
            raise ConfigError(
                f"{source('registry.path')} is not a SQLAlchemy URL ({type(exc).__name__}); expected "
                f"{EXAMPLES['registry.path']}"
            ) from None
    online = expanded.get("online_store") or {}
    kind = str(online.get("type", "sqlite")) if isinstance(online, dict) else "sqlite"
    if kind != "redis" and not kind.endswith("RedisOnlineStore"):
        return None
    key = "online_store.connection_string"
    nodes = _redis_nodes(str(online.get("connection_string", "localhost:6379")), source(key))
    return StoreAddress("redis", nodes, sources.get(key))


def own_metrics_dir(config: ServiceConfig) -> Path | None:
    """Give this server its own Prometheus multiprocess folder inside the project.

    BentoML keeps the files of every server under its home (``~/bentoml`` unless ``BENTOML_HOME``
    says otherwise) and empties that folder when a server starts: two projects served on one
    machine would wipe and read each other's /metrics. A `bentoml serve` worker calls this before
    any metric exists (deployment/service.py at import) and moves its files to
    ``serving.metrics_dir/<server>``, where ``<server>`` is its parent process (`bentoml serve`)
    by pid and start time: the workers of one server share a folder, no other server does, and a
    folder whose server is gone is removed.

    `bentoml serve` itself also imports the service (to read its configuration) but serves no
    request: it keeps no folder, even when its environment has ``PROMETHEUS_MULTIPROC_DIR`` (set in
    a shell, or inherited from a test runner); a folder named after its parent (that shell) would
    outlive every server.

    Returns:
        The folder; None outside a `bentoml serve` worker (no ``PROMETHEUS_MULTIPROC_DIR``, or the
        `bentoml serve` process itself).
    """
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ or _is_serve_command(sys.argv):
        return None
    import psutil

    root = config.path(config.params.metrics_dir)
    server = psutil.Process(os.getppid())
    mine = root / f"{server.pid}-{int(server.create_time() * 1000)}"
    mine.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():
        if other != mine and not _running(other.name):
            shutil.rmtree(other, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mine)
    return mine


def _is_serve_command(argv: list[str]) -> bool:
    """Whether ``argv`` is `bentoml serve ...` (the CLI or ``python -m bentoml``), not a worker."""
    program = Path(argv[0]) if argv else Path()
    return argv[1:2] == ["serve"] and "bentoml" in (program.name, program.parent.name)


def _running(folder: str) -> bool:
    """Whether the server a metrics folder is named for (``<pid>-<start ms>``) still runs."""
    import psutil

    pid, _, started = folder.partition("-")
    try:
        return pid.isdigit() and str(int(psutil.Process(int(pid)).create_time() * 1000)) == started
    except psutil.Error:
        return False


def check_service(config: ServiceConfig) -> str | None:
    """Every check above, and the server's own metrics folder, when deployment/service.py is
    imported; the bearer token (None: no auth).

    Raises:
        ConfigError: the first problem found, naming the variable or setting and the fix.
    """
    token = config.auth_token()
    online_store_address(config)
    own_metrics_dir(config)
    return token
