"""What every synthetic world shares: its seed and end date, the logistic link, and an intercept
that makes the true probability hit a target rate."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class WorldParams(BaseModel):
    """The fields every problem's ``generator:`` block has; a problem's GeneratorParams extends it."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 7
    end: datetime | None = Field(default=None, description="UTC end of data; None = today 00:00")

    def end_time(self) -> pd.Timestamp:
        """The end of the data, UTC: ``end``, or today 00:00 so the online store is fresh."""
        if self.end is None:
            return pd.Timestamp.now(tz="UTC").floor("D")
        end = pd.Timestamp(self.end)
        return end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_intercept(logit: np.ndarray, target: float, low: float = -25.0, high: float = 5.0) -> float:
    """The intercept that makes the mean of sigmoid(logit + intercept) equal ``target`` (bisection)."""
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if sigmoid(logit + mid).mean() < target else (low, mid)
    return (low + high) / 2
