"""Start (or join) Ray once per process, bounded and private.

Locally Ray gets a fixed number of CPUs, a small object store, its temp dir inside the project and
no dashboard. With ``address`` (or RAY_ADDRESS) set, the same code joins that cluster instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlsd.errors import ConfigError, TrainingError
from mlsd.telemetry import TELEMETRY_OFF, telemetry_off
from mlsd.training.params import RayParams

# Ray puts unix sockets under <temp_dir>/session_<date>_<pid>/sockets/, and AF_UNIX paths end at
# 107 bytes; this is the longest temp dir that leaves room for Ray's own part of the path.
_MAX_TEMP_DIR = 107 - len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


def cluster_address(params: RayParams) -> str | None:
    """The cluster to join: ``params.address``, else RAY_ADDRESS, else None (start a local Ray)."""
    return params.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(params: RayParams, root: Path | None = None) -> dict[str, Any]:
    """Connect this process to Ray if it is not already, and describe the cluster.

    Args:
        params: where and how big.
        root: the directory a relative ``temp_dir`` is resolved against (default: cwd).

    Returns:
        ``{"address", "nodes", "cpus"}`` of the cluster now in use.

    Raises:
        ConfigError: the local temp dir path is too long for Ray's unix sockets.
        TrainingError: the cluster named by the address cannot be reached.
    """
    telemetry_off()
    import ray

    if not ray.is_initialized():
        env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(params.train_poll_s), **TELEMETRY_OFF}
        address = cluster_address(params)
        try:
            if address:
                ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=params.num_cpus,
                    object_store_memory=params.object_store_memory_mb * 1024 * 1024,
                    include_dashboard=False,
                    _temp_dir=str(_temp_dir(params, root)),
                    runtime_env={"env_vars": env},
                    log_to_driver=False,
                )
        except ConnectionError as exc:
            raise TrainingError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": cluster_address(params) or "local",
        "nodes": len(nodes),
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
    }


def results_dir(params: RayParams, root: Path | None = None) -> Path:
    """Where Ray Train and Tune keep run results and checkpoints (an absolute path)."""
    return _temp_dir(params, root) / "results"


def _temp_dir(params: RayParams, root: Path | None) -> Path:
    path = Path(params.temp_dir)
    if not path.is_absolute():
        path = (root or Path.cwd()) / path
    path = path.resolve()
    if len(str(path)) > _MAX_TEMP_DIR:
        raise ConfigError(
            f"ray.temp_dir resolves to {path} ({len(str(path))} characters); Ray's unix socket paths "
            f"under it would pass the 107-byte limit. Set ray.temp_dir to a path of at most "
            f"{_MAX_TEMP_DIR} characters (for example /tmp/ray)."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
