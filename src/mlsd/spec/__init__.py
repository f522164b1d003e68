"""The problem spec: the single place where problem details live."""

from mlsd.spec.loader import load_spec, spec_from_mapping, spec_hash
from mlsd.spec.schema import (
    TOKEN_PATTERN,
    ColumnSpec,
    DesignSpec,
    EntitySpec,
    EscalationSpec,
    FeatureViewSpec,
    MetricSpec,
    ModelInput,
    ModelSpec,
    ProblemSpec,
    RetrievalSpec,
    TableSpec,
    TextRetrievalSpec,
    TextSpec,
    UpliftSpec,
    vector_elements,
)

__all__ = [
    "TOKEN_PATTERN",
    "ColumnSpec",
    "DesignSpec",
    "EntitySpec",
    "EscalationSpec",
    "FeatureViewSpec",
    "MetricSpec",
    "ModelInput",
    "ModelSpec",
    "ProblemSpec",
    "RetrievalSpec",
    "TableSpec",
    "TextRetrievalSpec",
    "TextSpec",
    "UpliftSpec",
    "load_spec",
    "spec_from_mapping",
    "spec_hash",
    "vector_elements",
]
