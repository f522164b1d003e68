"""Point-in-time window aggregates, computed without looking into the future.

Feature tables are snapshots: one row per key every ``every`` (e.g. daily), each holding counts
over trailing windows that end *strictly before* the snapshot's timestamp. Events are counted at
their event time and outcomes (clicks, purchases) at the time the outcome happened, so a snapshot
never contains an outcome that was not yet known at its timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import numpy as np
import pandas as pd

from mlsd.errors import ConfigError


def _bins(ts: pd.Series, origin: pd.Timestamp, every: timedelta) -> np.ndarray:
    return ((ts - origin) // pd.Timedelta(every)).to_numpy()


def rolling_counts(
    events: pd.DataFrame,
    keys: Sequence[str],
    event_ts: str,
    outcome_ts: str,
    windows: Mapping[str, timedelta],
    every: timedelta,
) -> pd.DataFrame:
    """Counts of events and of outcomes per key over trailing windows, snapshotted every ``every``.

    Args:
        events: one row per event; ``outcome_ts`` is NaT where the event had no outcome.
        keys: the entity join keys to group by.
        event_ts: column with the (tz-aware) event time.
        outcome_ts: column with the (tz-aware) outcome time, or NaT.
        windows: window name -> length; each a whole multiple of ``every``.
        every: snapshot period.

    Returns:
        Columns ``keys``, ``event_timestamp`` (snapshot time, UTC), and ``n_<name>`` (events) and
        ``k_<name>`` (outcomes) per window, for snapshots where any window has an event.

    Raises:
        ConfigError: if a window is not a positive whole multiple of ``every``.
    """
    spans = {}
    for name, length in windows.items():
        ratio = length / every
        if ratio < 1 or ratio != int(ratio):
            raise ConfigError(f"window {name!r} ({length}) must be a whole multiple of {every}")
        spans[name] = int(ratio)
    origin = events[event_ts].min().floor(pd.Timedelta(every))
    key_frame = events[list(keys)]
    codes, uniques = pd.MultiIndex.from_frame(key_frame).factorize()
    n_bins = int(_bins(events[event_ts], origin, every).max()) + 1

    def dense(mask: np.ndarray, ts_col: str) -> np.ndarray:
        # Rows are keys, columns are cumulative counts up to (not including) each boundary.
        grid = np.zeros((len(uniques), n_bins + 1))
        bins = _bins(events.loc[mask, ts_col], origin, every)
        keep = bins < n_bins  # outcomes after the last boundary are not known yet at any snapshot
        np.add.at(grid, (codes[mask][keep], bins[keep] + 1), 1)
        return np.cumsum(grid, axis=1)

    all_rows = np.ones(len(events), dtype=bool)
    cum_n = dense(all_rows, event_ts)
    cum_k = dense(events[outcome_ts].notna().to_numpy(), outcome_ts)
    boundaries = np.arange(1, n_bins + 1)  # snapshot j sees bins [j - span, j - 1]
    out: dict[str, np.ndarray] = {}
    for name, span in spans.items():
        start = np.maximum(boundaries - span, 0)
        out[f"n_{name}"] = (cum_n[:, boundaries] - cum_n[:, start]).ravel()
        out[f"k_{name}"] = (cum_k[:, boundaries] - cum_k[:, start]).ravel()
    frame = pd.DataFrame(out)
    key_idx = np.repeat(np.arange(len(uniques)), len(boundaries))
    for i, key in enumerate(keys):
        frame[key] = uniques.get_level_values(i).to_numpy()[key_idx]
    frame["event_timestamp"] = origin + np.tile(boundaries, len(uniques)) * pd.Timedelta(every)
    active = np.vstack([frame[f"n_{n}"].to_numpy() for n in spans]).max(axis=0) > 0
    frame = frame.loc[active, [*keys, "event_timestamp", *out]].reset_index(drop=True)
    for col in out:
        frame[col] = frame[col].astype("int64")
    return frame


def smoothed_rate(outcomes: pd.Series, trials: pd.Series, prior: float, weight: float) -> pd.Series:
    """(outcomes + prior * weight) / (trials + weight): a rate that is stable for small counts."""
    return (outcomes + prior * weight) / (trials + weight)
