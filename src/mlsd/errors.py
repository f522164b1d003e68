"""The one exception hierarchy of mlsd.

Every error mlsd raises on purpose derives from :class:`MlsdError` and says what is wrong
and how to fix it::

    MlsdError
    ├── SpecError              the problem spec is invalid (names the field and why)
    ├── ConfigError            a run parameter or profile setting is missing or wrong
    ├── DataValidationError    data failed its expectations (names each failed check)
    ├── FeatureStoreError      Feast could not be applied, queried or materialized
    ├── TrainingError          Ray training or tuning failed, or produced no model
    ├── ExportError            the model could not be exported to ONNX
    ├── GateError              a candidate failed its quality gates or ONNX parity; nothing registered
    └── RegistryError          the model store has no such model/version or a bad artifact
"""

from __future__ import annotations

from collections.abc import Sequence


class MlsdError(Exception):
    """Base class of every error raised on purpose by mlsd."""


class SpecError(MlsdError, ValueError):
    """The problem spec is invalid; the message names each offending field."""


class ConfigError(MlsdError, ValueError):
    """A run parameter or profile setting is missing or has a wrong value."""


class DataValidationError(MlsdError):
    """Data failed its expectations.

    Attributes:
        failures: one human-readable line per failed expectation.
    """

    def __init__(self, stage: str, failures: Sequence[str]) -> None:
        self.stage = stage
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(
            f"{stage}: {len(self.failures)} expectation(s) failed; nothing downstream was "
            f"written. Fix the data (or the spec's constraints) and rerun.\n{lines}"
        )


class FeatureStoreError(MlsdError):
    """Feast could not be applied, queried or materialized."""


class TrainingError(MlsdError):
    """Ray training or tuning failed, or produced no model."""


class ExportError(MlsdError):
    """The fitted model could not be turned into an ONNX graph."""


class GateError(MlsdError):
    """A candidate model failed a quality gate or the ONNX parity check; nothing was registered.

    Attributes:
        failures: one line per failed gate, with the numbers.
    """

    def __init__(self, failures: Sequence[str]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(
            f"candidate model rejected: {len(self.failures)} gate(s) failed; nothing was registered "
            f"and the stable model is unchanged.\n{lines}"
        )


class RegistryError(MlsdError):
    """The model store has no such model or version, or an artifact in it is unusable."""


class RolloutError(MlsdError):
    """The rollout file is invalid or names a model that cannot serve; the running rollout stays."""
