"""The one exception hierarchy of mlsd.

Every error mlsd raises on purpose derives from :class:`MlsdError` and says what is wrong
and how to fix it::

    MlsdError
    ├── SpecError              the problem spec is invalid (names the field and why)
    ├── ConfigError            a run parameter or profile setting is missing or wrong
    ├── DataValidationError    data failed its expectations (names each failed check)
    └── FeatureStoreError      Feast could not be applied, queried or materialized
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
