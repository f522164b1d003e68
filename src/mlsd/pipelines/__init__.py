"""Kedro pipelines: thin nodes that turn parameters and datasets into calls to the library."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd


def load_partitions(
    partitions: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
) -> dict[str, pd.DataFrame]:
    """A PartitionedDataset loads as name -> loader; in memory it is name -> frame. Accept both."""
    return {name: part() if callable(part) else part for name, part in partitions.items()}


def as_dict(value: Any) -> dict[str, Any]:
    """Kedro parameters arrive as dict-like objects; the library wants plain dicts."""
    return dict(value or {})
