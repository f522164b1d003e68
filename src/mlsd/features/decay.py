"""Recency-decayed counts, snapshotted without looking into the future.

A decayed count weighs each past event by ``0.5 ** (age / half_life)``: one event today counts 1,
one a half-life ago 0.5. It estimates a current rate when rates drift (Roth et al., "Suggesting
friends using the implicit social graph", KDD 2010: the Interactions Rank of a contact). Like
:mod:`mlsd.features.windows`, the table is a snapshot every ``every``: a snapshot at time ``b``
holds only events strictly before ``b``, decayed to ``b``, so joining an event at ``t >= b`` to it
never sees the event itself or anything after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import numpy as np
import pandas as pd

from mlsd.errors import ConfigError


def decayed_counts(
    events: pd.DataFrame,
    keys: Sequence[str],
    ts: str,
    half_lives: Mapping[str, timedelta],
    every: timedelta,
    start: pd.Timestamp,
    end: pd.Timestamp,
) -> pd.DataFrame:
    """Decayed counts of events per key at every snapshot ``start + every, start + 2 every, ... <= end``.

    Args:
        events: one row per event (a message, a play...), with ``keys`` and a tz-aware ``ts``.
        keys: the entity join keys to group by.
        ts: the event-time column; events at or after ``end`` are in no snapshot.
        half_lives: name -> half-life; each becomes a column ``decay_<name>``.
        every: snapshot period.
        start: the first snapshot is ``start + every``; no event may be earlier than ``start``.
        end: the last snapshot is the latest one not after ``end``.

    Returns:
        Columns ``keys``, ``event_timestamp`` (snapshot time), ``decay_<name>`` (float64) per
        half-life and ``last_age_s`` (seconds from the key's latest event to the snapshot), one row
        per key and snapshot from the key's first event on.

    Raises:
        ConfigError: a half-life or ``every`` is not positive, or an event precedes ``start``.
    """
    if every <= timedelta(0) or any(h <= timedelta(0) for h in half_lives.values()):
        raise ConfigError(f"every ({every}) and every half-life ({dict(half_lives)}) must be positive")
    if len(events) and events[ts].min() < start:
        raise ConfigError(f"{ts}: events from {events[ts].min()} precede the snapshots' start {start}")
    step = pd.Timedelta(every)
    n_snap = int((end - start) // step)
    kept = events.loc[events[ts] < start + n_snap * step]
    codes, uniques = pd.MultiIndex.from_frame(kept[list(keys)]).factorize()
    offset = (kept[ts] - start).dt.total_seconds().to_numpy()
    bins = (offset // step.total_seconds()).astype("int64")  # an event counts from snapshot bin + 1
    to_snapshot = (bins + 1) * step.total_seconds() - offset  # seconds from the event to that snapshot
    out: dict[str, np.ndarray] = {}
    for name, half_life in half_lives.items():
        h = half_life.total_seconds()
        fresh = np.zeros((len(uniques), n_snap))
        np.add.at(fresh, (codes, bins), 0.5 ** (to_snapshot / h))
        carry = 0.5 ** (step.total_seconds() / h)
        decayed = np.empty_like(fresh)
        running = np.zeros(len(uniques))
        for j in range(n_snap):
            running = running * carry + fresh[:, j]
            decayed[:, j] = running
        out[f"decay_{name}"] = decayed.ravel()
    last = np.full((len(uniques), n_snap), -np.inf)
    np.maximum.at(last, (codes, bins), offset)
    last = np.maximum.accumulate(last, axis=1)
    snapshot_s = np.arange(1, n_snap + 1) * step.total_seconds()
    out["last_age_s"] = (snapshot_s[None, :] - last).ravel()
    frame = pd.DataFrame(out)
    key_idx = np.repeat(np.arange(len(uniques)), n_snap)
    for i, key in enumerate(keys):
        frame[key] = uniques.get_level_values(i).to_numpy()[key_idx]
    frame["event_timestamp"] = start + np.tile(np.arange(1, n_snap + 1), len(uniques)) * step
    frame = frame.loc[np.isfinite(frame["last_age_s"].to_numpy())]
    return frame[[*keys, "event_timestamp", *out]].reset_index(drop=True)
