"""The problem spec: the single place where problem details live."""

from mlsd.spec.loader import load_spec, spec_from_mapping, spec_hash
from mlsd.spec.schema import (
    ColumnSpec,
    DesignSpec,
    EntitySpec,
    FeatureViewSpec,
    MetricSpec,
    ModelInput,
    ModelSpec,
    ProblemSpec,
    TableSpec,
    UpliftSpec,
)

__all__ = [
    "ColumnSpec",
    "DesignSpec",
    "EntitySpec",
    "FeatureViewSpec",
    "MetricSpec",
    "ModelInput",
    "ModelSpec",
    "ProblemSpec",
    "TableSpec",
    "UpliftSpec",
    "load_spec",
    "spec_from_mapping",
    "spec_hash",
]
