"""Point-in-time window counts on tiny hand-made frames, checked to the exact number."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from mlsd.errors import ConfigError
from mlsd.features.windows import rolling_counts, smoothed_rate

DAY = timedelta(days=1)


def ts(text: object) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def events_frame(rows: list[tuple[object, ...]], keys: list[str]) -> pd.DataFrame:
    """Rows of (*keys, event time, outcome time or None) -> an events frame with UTC timestamps."""
    frame = pd.DataFrame([r[:-2] for r in rows], columns=keys)
    frame["ts"] = pd.Series([ts(r[-2]) for r in rows], dtype="datetime64[ns, UTC]")
    frame["click_ts"] = pd.Series(
        [pd.NaT if r[-1] is None else ts(r[-1]) for r in rows], dtype="datetime64[ns, UTC]"
    )
    return frame


def counts(events: pd.DataFrame, keys: list[str], windows: dict[str, timedelta]) -> pd.DataFrame:
    out = rolling_counts(events, keys, "ts", "click_ts", windows, every=DAY)
    return out.sort_values([*keys, "event_timestamp"]).reset_index(drop=True)


@pytest.fixture
def three_days() -> pd.DataFrame:
    """Three users over 2026-01-01..03; snapshots are at 01-02, 01-03 and 01-04 00:00 UTC."""
    return events_frame(
        [
            (1, "2026-01-01 10:00", "2026-01-01 10:05"),
            (1, "2026-01-01 23:59", "2026-01-02 00:00:01"),  # clicked just after the 01-02 snapshot
            (1, "2026-01-02 12:00", None),
            (2, "2026-01-02 08:00", "2026-01-03 00:00:00"),  # clicked exactly at the 01-03 snapshot
            (3, "2026-01-03 09:00", None),
        ],
        keys=["user_id"],
    )


def row(frame: pd.DataFrame, user_id: int, at: str) -> dict[str, int]:
    match = frame[(frame["user_id"] == user_id) & (frame["event_timestamp"] == ts(at))]
    assert len(match) == 1
    return match.drop(columns=["user_id", "event_timestamp"]).iloc[0].to_dict()


def test_counts_over_1d_and_2d_windows(three_days: pd.DataFrame) -> None:
    expected = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3],
            "event_timestamp": [
                *(ts("2026-01-02"), ts("2026-01-03"), ts("2026-01-04")),
                *(ts("2026-01-03"), ts("2026-01-04")),
                ts("2026-01-04"),
            ],
            "n_1d": [2, 1, 0, 1, 0, 1],
            "k_1d": [1, 1, 0, 0, 1, 0],
            "n_2d": [2, 3, 1, 1, 1, 1],
            "k_2d": [1, 2, 1, 0, 1, 0],
        }
    )

    result = counts(three_days, ["user_id"], {"1d": DAY, "2d": 2 * DAY})

    pd.testing.assert_frame_equal(result, expected)


def test_outcome_after_snapshot_is_not_counted_in_it(three_days: pd.DataFrame) -> None:
    result = counts(three_days, ["user_id"], {"1d": DAY})

    # The 23:59 impression is in the 01-02 snapshot, its click (00:00:01 on 01-02) is not.
    assert row(result, 1, "2026-01-02") == {"n_1d": 2, "k_1d": 1}
    assert row(result, 1, "2026-01-03") == {"n_1d": 1, "k_1d": 1}


def test_outcome_at_the_boundary_counts_only_at_the_next_snapshot(three_days: pd.DataFrame) -> None:
    result = counts(three_days, ["user_id"], {"1d": DAY, "2d": 2 * DAY})

    assert row(result, 2, "2026-01-03") == {"n_1d": 1, "k_1d": 0, "n_2d": 1, "k_2d": 0}
    assert row(result, 2, "2026-01-04") == {"n_1d": 0, "k_1d": 1, "n_2d": 1, "k_2d": 1}


def test_event_at_the_boundary_counts_only_at_the_next_snapshot() -> None:
    events = events_frame(
        [(1, "2026-01-01 06:00", None), (1, "2026-01-02 00:00:00", "2026-01-02 00:00:00")],
        keys=["user_id"],
    )

    result = counts(events, ["user_id"], {"1d": DAY})

    assert row(result, 1, "2026-01-02") == {"n_1d": 1, "k_1d": 0}
    assert row(result, 1, "2026-01-03") == {"n_1d": 1, "k_1d": 1}


def test_snapshots_with_all_windows_empty_are_not_emitted(three_days: pd.DataFrame) -> None:
    def emitted(windows: dict[str, timedelta]) -> set[tuple[int, str]]:
        result = counts(three_days, ["user_id"], windows)
        return set(zip(result["user_id"], result["event_timestamp"].dt.strftime("%m-%d"), strict=True))

    # With 1d only, a (user, day) is emitted only if the user had an impression the day before,
    # even when that day had an outcome (user 2's click at 01-03 00:00 is in no 1d row).
    assert emitted({"1d": DAY}) == {(1, "01-02"), (1, "01-03"), (2, "01-03"), (3, "01-04")}
    # With 2d too, a row is kept while any window has an impression.
    assert emitted({"1d": DAY, "2d": 2 * DAY}) == {
        *((1, "01-02"), (1, "01-03"), (1, "01-04")),
        *((2, "01-03"), (2, "01-04")),
        (3, "01-04"),
    }


def test_two_keys_are_grouped_together() -> None:
    events = events_frame(
        [
            (1, "auto", "2026-01-01 10:00", "2026-01-01 10:01"),
            (1, "food", "2026-01-01 11:00", None),
            (1, "auto", "2026-01-01 12:00", None),
            (2, "auto", "2026-01-02 09:00", "2026-01-02 09:10"),
        ],
        keys=["user_id", "category"],
    )
    expected = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "category": ["auto", "food", "auto"],
            "event_timestamp": [ts("2026-01-02"), ts("2026-01-02"), ts("2026-01-03")],
            "n_1d": [2, 1, 1],
            "k_1d": [1, 0, 1],
        }
    )

    result = counts(events, ["user_id", "category"], {"1d": DAY})

    pd.testing.assert_frame_equal(result, expected)


@pytest.mark.parametrize(
    ("name", "length"),
    [("w36h", timedelta(hours=36)), ("w12h", timedelta(hours=12)), ("w0", timedelta(0))],
)
def test_window_not_a_whole_multiple_of_every_is_rejected(
    three_days: pd.DataFrame, name: str, length: timedelta
) -> None:
    with pytest.raises(ConfigError, match=f"window '{name}'"):
        rolling_counts(three_days, ["user_id"], "ts", "click_ts", {"1d": DAY, name: length}, every=DAY)


def test_smoothed_rate_with_no_trials_is_the_prior() -> None:
    rate = smoothed_rate(pd.Series([0]), pd.Series([0]), prior=0.02, weight=20)

    assert rate.tolist() == [pytest.approx(0.02)]


def test_smoothed_rate_small_counts_exact() -> None:
    rate = smoothed_rate(pd.Series([1, 3]), pd.Series([10, 3]), prior=0.02, weight=20)

    assert rate.tolist() == [pytest.approx(1.4 / 30), pytest.approx(3.4 / 23)]


def test_smoothed_rate_approaches_raw_rate_for_large_counts() -> None:
    outcomes = pd.Series([50, 5_000, 500_000])
    trials = pd.Series([1_000, 100_000, 10_000_000])

    errors = (smoothed_rate(outcomes, trials, prior=0.02, weight=20) - 0.05).abs().tolist()

    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6
