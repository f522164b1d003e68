"""Features: window aggregates, Feast definitions from the spec, and store operations."""

from mlsd.features.definitions import feast_objects
from mlsd.features.store import (
    FeatureStoreParams,
    apply_definitions,
    fill_defaults,
    materialize,
    online_features,
    open_store,
    training_set,
)
from mlsd.features.windows import rolling_counts, smoothed_rate

__all__ = [
    "FeatureStoreParams",
    "apply_definitions",
    "feast_objects",
    "fill_defaults",
    "materialize",
    "online_features",
    "open_store",
    "rolling_counts",
    "smoothed_rate",
    "training_set",
]
