"""Synthetic rows of the ad_click model inputs with a known click probability, for unit tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsd.spec import ModelInput


def model_input_rows(
    inputs: list[ModelInput], n: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` rows of ``inputs`` (numbers as the training set holds them, strings from each input's
    categories) and the true click probability: a known logistic function of a few inputs."""
    data: dict[str, Any] = {}
    for item in inputs:
        if item.dtype == "string":
            data[item.name] = rng.choice(item.categories or [], n)
        elif "_imps_" in item.name:
            data[item.name] = rng.integers(0, 50, n)
        elif "_ctr_" in item.name:
            data[item.name] = rng.beta(1, 30, n)
        else:
            data[item.name] = rng.integers(1, 24, n)
    frame = pd.DataFrame(data)
    logit = (
        -1.0
        + 25.0 * (frame["user_ctr_7d"] - 0.03)
        - 0.25 * (frame["position"] - 12)
        + 0.02 * (frame["age"] - 12)
        + 1.2 * (frame["country"] == "US")
        - 0.8 * (frame["device"] == "desktop")
    )
    return frame, 1.0 / (1.0 + np.exp(-logit.to_numpy()))
