"""Assemble the scoring service of a project from its conf: spec, Feast store, registry, rollout.

``load_config`` is cheap (YAML and pydantic only) so deployment/service.py can build its request
models at import; ``build_scorer`` opens the stores and loads models when a worker starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mlsd.errors import ConfigError
from mlsd.spec import ProblemSpec

if TYPE_CHECKING:
    from mlsd.registry import ModelRegistry


class ServingParams(BaseModel):
    """conf ``serving:``: where the rollout and the prediction log are, and the server's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout_file: str = Field(default="deployment/rollout.yaml", description="relative to the project")
    prediction_log: str = Field(default="data/07_model_output/predictions", description="JSONL folder")
    feedback_log: str = Field(default="data/07_model_output/feedback", description="`mlsd simulate` output")
    max_batch: int = Field(default=256, ge=1, le=100_000, description="requests per batch call")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger bodies get a 413")
    flush_ms: float = Field(default=200, gt=0, description="longest a log record waits before fsync")
    reload_s: float = Field(default=1.0, gt=0, description="how often the rollout file is checked")
    ort_threads: int = Field(
        default=1,
        ge=0,
        description="ONNX Runtime threads per model (0: all cores); with 1 a call's CPU time on its "
        "thread is the model's whole cost, what the canary's latency is judged on",
    )
    shadow_queue: int = Field(default=1000, ge=1, description="pending shadow batches before skipping")
    canary_threads: int = Field(default=4, ge=1, description="canary scorings at once")
    workers: int = Field(default=1, ge=1, description="server processes")
    port: int = Field(
        default=3000, ge=1, le=65535, description="where `make serve` listens and `mlsd simulate` sends"
    )
    metrics_dir: str = Field(
        default="data/serving/prometheus",
        description="each running server's Prometheus multiprocess files, one folder per server",
    )
    service_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="BentoML service name (metrics' service_name, the API title); default mlsd-<problem>",
    )
    timeout_s: float = Field(default=10, gt=0, description="BentoML's request timeout")
    online_timeout_ms: float = Field(
        default=500, gt=0, description="longest wait for the online store; slower reads serve the defaults"
    )
    online_retry_s: float = Field(
        default=1.0, ge=0, description="after a failed online read, seconds before the store is asked again"
    )
    auth_token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="environment variable holding the bearer token for /predict, /predict_batch and "
        "/rollout; unset: no auth",
    )


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to know before it opens anything."""

    project: Path
    env: str | None
    spec: ProblemSpec
    params: ServingParams
    parameters: dict[str, Any]

    @property
    def service_name(self) -> str:
        """The BentoML service name: ``serving.service_name``, else ``mlsd-<problem>``."""
        return self.params.service_name or f"mlsd-{self.spec.name.replace('_', '-')}"

    @property
    def url(self) -> str:
        """Where the service answers on this machine (``serving.port`` on the loopback address)."""
        return f"http://127.0.0.1:{self.params.port}"

    def path(self, value: str | Path) -> Path:
        from mlsd.project import project_path

        return project_path(self.project, value)

    def auth_token(self) -> str | None:
        """The bearer token the service requires (and clients send), or None when auth is off.

        Raises:
            ConfigError: ``serving.auth_token_env`` names a variable that is unset or empty.
        """
        name = self.params.auth_token_env
        if name is None:
            return None
        token = os.environ.get(name, "")
        if not token:
            raise ConfigError(
                f"serving.auth_token_env is {name}, but ${name} is not set: export the service's "
                "bearer token in it (or remove serving.auth_token_env to serve without auth)"
            )
        return token

    def registry(self) -> ModelRegistry:
        """The project's model registry (conf ``registry.home``, one model per problem)."""
        from mlsd.registry import ModelRegistry, RegistryParams

        params = RegistryParams.model_validate(dict(self.parameters.get("registry") or {}))
        return ModelRegistry(self.path(params.home), self.spec.name)


def load_config(project: Path | None = None, env: str | None = None) -> ServiceConfig:
    """The service config of ``project`` (default ``$MLSD_PROJECT_DIR`` or the cwd), Kedro env
    ``env`` (default ``$MLSD_ENV``, else local).

    Raises:
        ConfigError / SpecError: the conf is missing or invalid (the message names the field).
    """
    from mlsd.project import load_parameters
    from mlsd.spec import spec_from_mapping

    project = (project or Path(os.environ.get("MLSD_PROJECT_DIR") or Path.cwd())).resolve()
    env = env or os.environ.get("MLSD_ENV") or None
    parameters = load_parameters(project, env)
    if "problem" not in parameters:
        raise ConfigError(f"{project}/conf has no problem spec (problem.yml)")
    spec = spec_from_mapping(parameters["problem"])
    try:
        params = ServingParams.model_validate(dict(parameters.get("serving") or {}))
    except ValueError as exc:
        raise ConfigError(f"serving: {exc}") from exc
    return ServiceConfig(project=project, env=env, spec=spec, params=params, parameters=parameters)


def build_scorer(config: ServiceConfig) -> Any:
    """Open the online store, load the rollout's models and start the prediction log.

    Raises:
        ConfigError: a variable of the Feast profile is unset or malformed (it is named).
        FeatureStoreError / RolloutError / RegistryError: something the server needs is missing;
            the message says what to run first.
    """
    from mlsd.features import FeatureStoreParams, open_store
    from mlsd.monitoring import CanaryParams
    from mlsd.serving import metrics
    from mlsd.serving.online import OnlineFeatures
    from mlsd.serving.prediction_log import PredictionLog
    from mlsd.serving.preflight import online_store_address
    from mlsd.serving.recommender import Recommender
    from mlsd.serving.rollout import RolloutManager, served_outputs
    from mlsd.serving.scorer import Scorer

    try:
        canary = CanaryParams.model_validate(dict(config.parameters.get("canary_analysis") or {}))
    except ValueError as exc:
        raise ConfigError(f"canary_analysis: {exc}") from exc
    # MlsdCanaryLatencyHigh reads the canary analysis's latency limits from here: the two agree.
    metrics.CANARY_COST_RATIO.set(canary.max_p99_ratio)
    metrics.CANARY_COST_INCREASE.set(canary.min_p99_increase_ms(config.spec.serving.latency_budget_ms) / 1000)
    address = online_store_address(config)
    store_params = FeatureStoreParams.model_validate(dict(config.parameters.get("feature_store") or {}))
    store = open_store(store_params.model_copy(update={"repo_path": config.path(store_params.repo_path)}))
    params = config.params
    rollout = RolloutManager(
        config.path(params.rollout_file),
        config.registry(),
        config.spec.model_input_schema(),
        params.ort_threads,
        served_outputs(config.spec),
    )
    rollout.watch(params.reload_s)

    def logged(written: int, backlog: int) -> None:
        metrics.LOGGED.inc(written)
        metrics.LOG_BACKLOG.set(backlog)

    log = PredictionLog(
        config.path(params.prediction_log), params.flush_ms, on_write=logged, on_lost=metrics.LOG_LOST.inc
    )
    features = OnlineFeatures(
        store,
        config.spec,
        timeout_s=params.online_timeout_ms / 1000,
        retry_s=params.online_retry_s,
        address=address,
    )
    core = {"retrieval": Recommender}.get(config.spec.task, Scorer)  # by task; default: a score per request
    return core(config.spec, features, rollout, log, params.shadow_queue, params.canary_threads)
