"""mlsd: the machinery of mlsd-template, one sub-package per stage of an ML system.

Importing ``mlsd`` is cheap: Feast, Great Expectations, Ray and friends are imported only inside
the functions that use them.
"""

from mlsd.errors import (
    ConfigError,
    DataValidationError,
    ExportError,
    FeatureStoreError,
    GateError,
    MlsdError,
    RegistryError,
    RolloutError,
    SpecError,
    TrainingError,
)
from mlsd.spec import ProblemSpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataValidationError",
    "ExportError",
    "FeatureStoreError",
    "GateError",
    "MlsdError",
    "ProblemSpec",
    "RegistryError",
    "RolloutError",
    "SpecError",
    "TrainingError",
    "__version__",
    "load_spec",
]
