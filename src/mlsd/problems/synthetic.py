"""What every synthetic world shares: its seed and end date, the logistic link, an intercept
that makes the true probability hit a target rate, and the windows of point-in-time rate features."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlsd.features.windows import rolling_counts, smoothed_rate
from mlsd.spec.schema import Duration, parse_duration


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


Array = np.ndarray


class TasteWorldParams(WorldParams):
    """A recommendation world's generator fields: users whose latent taste over groups of items
    (genres, categories) drives what they interact with, and how active they are."""

    taste_strength: float = Field(default=1.6, ge=0, description="how much group taste drives interactions")
    noise_sd: float = Field(default=0.35, ge=0, description="per-user and per-item taste noise")
    activity_sd: float = Field(default=0.5, ge=0, description="spread of user activity (log scale)")

    def item_groups(self, rng: np.random.Generator, n_groups: int, n_items: int) -> tuple[Array, Array]:
        """Each item's group and its latent vector: the group's axis plus ``noise_sd`` noise."""
        group = rng.integers(0, n_groups, n_items)
        return group, np.eye(n_groups)[group] + rng.normal(0, self.noise_sd, (n_items, n_groups))

    def user_taste(self, rng: np.random.Generator, n_groups: int, n_users: int) -> tuple[Array, Array]:
        """Each user's taste over the groups (one or two loved ones: a Dirichlet draw with a small
        concentration, scaled by ``taste_strength``, plus noise) and log activity."""
        taste = self.taste_strength * rng.dirichlet(np.full(n_groups, 0.3), n_users) * 2
        taste += rng.normal(0, self.noise_sd, taste.shape)
        return taste, rng.normal(0, self.activity_sd, n_users)


class DailyWindowParams(BaseModel):
    """A recommendation world's ``features:`` block: one trailing window of whole days."""

    model_config = ConfigDict(extra="forbid")

    window_days: int = Field(default=7, ge=1, description="trailing window of the *_7d features")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrate_intercept(logit: np.ndarray, target: float, low: float = -25.0, high: float = 5.0) -> float:
    """The intercept that makes the mean of sigmoid(logit + intercept) equal ``target`` (bisection)."""
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if sigmoid(logit + mid).mean() < target else (low, mid)
    return (low + high) / 2


def window_sums(grid: np.ndarray, window: int) -> np.ndarray:
    """``grid[key, day]`` summed over the ``window`` days before each snapshot day 1..days (a
    snapshot at the start of day d sees days d - window .. d - 1, never its own day)."""
    cum = np.concatenate([np.zeros((grid.shape[0], 1)), np.cumsum(grid, axis=1)], axis=1)
    days = np.arange(1, grid.shape[1] + 1)
    return cum[:, days] - cum[:, np.maximum(days - window, 0)]


class WindowParams(BaseModel):
    """Snapshot period and trailing windows of one feature table; each window names its fields."""

    model_config = ConfigDict(extra="forbid")

    every: Duration
    windows: list[str] = Field(min_length=1)

    @field_validator("windows")
    @classmethod
    def _durations(cls, windows: list[str]) -> list[str]:
        bad = [w for w in windows if not isinstance(parse_duration(w), timedelta)]
        if bad:
            raise ValueError(f"{bad} are not durations like '1d' or '12h'")
        return windows


def rate_snapshots(
    events: pd.DataFrame,
    keys: Sequence[str],
    outcome_ts: str,
    w: WindowParams,
    names: tuple[str, str],
    prior: tuple[float, float],
) -> pd.DataFrame:
    """Point-in-time snapshots of one key's trials and smoothed outcome rate over ``w``'s windows.

    Trials are counted at ``ts``, outcomes when they happened (``outcome_ts``, NaT for none), so a
    snapshot holds only what was known at its timestamp (mlsd.features.windows).

    Args:
        events: one row per trial, with ``keys``, ``ts`` and ``outcome_ts``.
        keys: the entity join keys.
        outcome_ts: the outcome-time column.
        w: snapshot period and windows.
        names: field prefixes of the counts and the rates: ``("user_imps", "user_eng_rate")``
            gives ``user_imps_7d`` and ``user_eng_rate_7d``.
        prior: ``(rate, weight)``: rates are smoothed towards ``rate`` with ``weight`` pseudo-trials,
            so a key without history and the feature's default agree.

    Returns:
        Columns ``keys``, ``event_timestamp`` and the two fields per window (rates as float32).
    """
    windows = {label: parse_duration(label) for label in w.windows}
    counts = rolling_counts(events, keys, "ts", outcome_ts, windows, w.every)
    table = counts[[*keys, "event_timestamp"]].copy()
    for label in windows:
        n, k = counts[f"n_{label}"], counts[f"k_{label}"]
        table[f"{names[0]}_{label}"] = n
        table[f"{names[1]}_{label}"] = smoothed_rate(k, n, *prior).astype("float32")
    return table
