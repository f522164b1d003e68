"""Recency-decayed count snapshots on tiny hand-made frames, checked to the exact number."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlsd.errors import ConfigError
from mlsd.features.decay import decayed_counts

DAY = timedelta(days=1)
START = pd.Timestamp("2026-01-01", tz="UTC")


def frame(rows: list[tuple[int, str]]) -> pd.DataFrame:
    return pd.DataFrame({"key": [k for k, _ in rows], "ts": pd.to_datetime([t for _, t in rows], utc=True)})


def snapshots(events: pd.DataFrame, end: str = "2026-01-05", **half_lives: timedelta) -> pd.DataFrame:
    return decayed_counts(
        events, ["key"], "ts", half_lives or {"1d": DAY}, DAY, START, pd.Timestamp(end, tz="UTC")
    )


def test_each_event_weighs_half_per_half_life_from_the_next_snapshot_on() -> None:
    out = snapshots(frame([(1, "2026-01-01 12:00"), (1, "2026-01-03 00:00")]))
    assert list(out["event_timestamp"].dt.day) == [2, 3, 4, 5]  # from the key's first event on
    first = 0.5**0.5  # 12 h old at 01-02 00:00 with a one-day half-life
    expected = [first, first / 2, first / 4 + 0.5, first / 8 + 0.25]
    np.testing.assert_allclose(out["decay_1d"], expected)
    # The event at 01-03 00:00 sits exactly on a snapshot: it is not in that snapshot, only later.
    np.testing.assert_allclose(out["last_age_s"], [12 * 3600, 36 * 3600, 24 * 3600, 48 * 3600])


def test_half_lives_are_independent_columns_and_keys_do_not_mix() -> None:
    out = snapshots(
        frame([(1, "2026-01-01 00:00"), (2, "2026-01-02 00:00")]), end="2026-01-03", short=DAY, long=4 * DAY
    )
    row = out.set_index(["key", out["event_timestamp"].dt.day])
    assert row.loc[(1, 3), "decay_short"] == pytest.approx(0.25)
    assert row.loc[(1, 3), "decay_long"] == pytest.approx(0.5**0.5)
    assert row.loc[(2, 3), "decay_short"] == pytest.approx(0.5)
    assert (2, 2) not in row.index  # key 2's event at 01-02 00:00 is not yet in that snapshot


def test_events_at_or_after_the_last_snapshot_are_in_none() -> None:
    out = snapshots(frame([(1, "2026-01-01 06:00"), (1, "2026-01-05 00:00"), (2, "2026-01-05 01:00")]))
    assert set(out["key"]) == {1}
    assert out["event_timestamp"].max() == pd.Timestamp("2026-01-05", tz="UTC")
    assert out["decay_1d"].iloc[-1] == pytest.approx(0.5 ** (3 + 18 / 24))


@pytest.mark.parametrize(
    ("events", "half_life", "message"),
    [
        (frame([(1, "2025-12-31 23:00")]), DAY, "precede the snapshots' start"),
        (frame([(1, "2026-01-01 01:00")]), timedelta(0), "must be positive"),
    ],
)
def test_bad_input_is_refused_by_name(events: pd.DataFrame, half_life: timedelta, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        snapshots(events, h=half_life)
