"""Features: window aggregates and decayed counts, Feast definitions from the spec, and store operations."""

from mlsd.features.decay import decayed_counts
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
    "decayed_counts",
    "feast_objects",
    "fill_defaults",
    "materialize",
    "online_features",
    "open_store",
    "rolling_counts",
    "smoothed_rate",
    "training_set",
]
