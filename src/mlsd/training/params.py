"""Run parameters of the training stage (conf/*/parameters.yml: ``ray`` and ``training``)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from mlsd.spec.schema import Duration


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayParams(_Params):
    """Where Ray runs. Without an address (here or in RAY_ADDRESS) a bounded local Ray starts."""

    address: str | None = Field(
        default=None, description="a cluster to join ('auto', 'host:port', 'ray://...'); else RAY_ADDRESS"
    )
    num_cpus: int = Field(default=2, ge=1, description="CPUs of the local Ray")
    object_store_memory_mb: int = Field(default=300, ge=80, description="object store of the local Ray")
    temp_dir: str = Field(default=".ray", description="sessions, logs and results (kept inside the project)")
    train_poll_s: float = Field(
        default=0.25, gt=0, description="Ray Train's worker poll period (its 2 s default adds 2 s a run)"
    )


class TuneParams(_Params):
    """Ray Tune: how many configurations of the search space to try, and how many at once."""

    num_samples: int = Field(default=4, ge=1)
    max_concurrent: int = Field(default=2, ge=1)


class TrainingParams(_Params):
    """How the training set is split by time, and how the model is searched and fitted."""

    seed: int = 0
    holdout: Duration = Field(default=timedelta(days=2), description="last span of time, for evaluation")
    validation: Duration = Field(default=timedelta(days=2), description="span before it, for tuning")
    num_workers: int = Field(default=2, ge=1, description="Ray Train data-parallel workers")
    threads_per_worker: int = Field(default=1, ge=1, description="CPUs (and threads) of each worker")
    tune: TuneParams = TuneParams()
    parity_rows: int = Field(default=10_000, ge=1, description="rows ONNX must match the native model on")
    parity_tolerance: float = Field(default=1e-5, gt=0, description="max |onnx - native| probability")
