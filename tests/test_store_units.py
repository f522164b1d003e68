"""Feature-store operations in process, on tiny frames and a stand-in Feast store: the training set
keeps every event and fills an entity with no history with exactly the spec's defaults (never 0),
and every Feast failure is named. tests/test_feature_store.py runs the real Feast store (slow)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Feast costs seconds to import and store.py imports it inside its functions: imported here, once,
# each test stays fast (and `make mutation`'s forked test runs share the import).
import feast  # noqa: F401
import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.errors import ConfigError, FeatureStoreError
from mlsd.features.store import (
    FeatureStoreParams,
    apply_definitions,
    fill_defaults,
    materialize,
    online_features,
    open_store,
    training_set,
)
from mlsd.spec import ProblemSpec, load_spec, spec_from_mapping

SPEC_PATH = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"
SPEC = load_spec(SPEC_PATH)
T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


class _Job:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def to_df(self) -> pd.DataFrame:
        return self.frame


class _Store:
    """A Feast store that knows the feature rows in ``history`` (one frame per view: join keys and
    features, one row per entity) and answers a point-in-time join with the rows of the entities
    it knows only, as Feast 0.67's file store does for an entity outside the TTL window."""

    project = "units"

    def __init__(self, history: dict[str, pd.DataFrame], twice: str | None = None) -> None:
        self.history, self.twice = history, twice
        self.asked: list[tuple[str, pd.DataFrame, list[str]]] = []

    def get_historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> _Job:
        view = features[0].split(":")[0]
        self.asked.append((view, entity_df.copy(), features))
        known = entity_df.merge(self.history[view], how="inner")
        if view == self.twice:  # the same entity row again, with other values
            known = pd.concat([known, known.iloc[:1].assign(**{c: 0 for c in known.columns[-1:]})])
        return _Job(known)


def _events() -> pd.DataFrame:
    """Four impressions: user 1 / ad 10 have history; user 2 / ad 20 never had any; the last two
    share keys and time (one entity row for Feast); ``served_at`` is a timestamp that is no feature."""
    return pd.DataFrame(
        {
            "user_id": [1, 2, 1, 1],
            "ad_id": [10, 20, 20, 20],
            "category": ["auto", "travel", "auto", "auto"],
            "position": [1, 2, 3, 3],
            "hour": [12, 13, 14, 14],
            "ts": [T0, T0, T0, T0],
            "served_at": [T0] * 4,
            "clicked": [1, 0, 0, 1],
        }
    )


def _history() -> dict[str, pd.DataFrame]:
    ts = {"event_timestamp": T0}
    return {
        "user_profile": pd.DataFrame(
            {"user_id": [1], **ts, "age": [52], "country": ["DE"], "device": ["ios"]}
        ),
        "user_ctr": pd.DataFrame(
            {
                "user_id": [1],
                **ts,
                "user_imps_1d": [40],
                "user_ctr_1d": [0.05],
                "user_imps_7d": [300],
                "user_ctr_7d": [0.04],
            }
        ),
        "ad_ctr": pd.DataFrame(
            {
                "ad_id": [10],
                **ts,
                "ad_imps_1d": [7],
                "ad_ctr_1d": [0.1],
                "ad_imps_7d": [70],
                "ad_ctr_7d": [0.09],
            }
        ),
        "user_category_ctr": pd.DataFrame(
            {
                "user_id": [1],
                "category": ["auto"],
                **ts,
                "uc_imps_1d": [3],
                "uc_ctr_1d": [0.3],
                "uc_imps_7d": [9],
                "uc_ctr_7d": [0.2],
            }
        ),
    }


def test_training_set_gives_an_entity_with_no_history_exactly_the_spec_defaults() -> None:
    """User 2 and ad 20 never had an impression: every one of their features is the spec's default
    (age 35, country US, device android, CTRs 0.02), not 0 and not the other entities' values."""
    frame, missing = training_set(_Store(_history()), SPEC, _events())

    user2 = frame.iloc[1]
    defaults = {name: col.default for name, col in SPEC.feature_fields().items()}
    text = {name for name, value in defaults.items() if isinstance(value, str)}
    assert {name: user2[name] for name in text} == {name: defaults[name] for name in text}
    assert {name: float(user2[name]) for name in defaults.keys() - text} == pytest.approx(
        {name: defaults[name] for name in defaults.keys() - text}
    )
    assert user2["age"] == 35
    assert user2["country"] == "US"
    assert user2["user_ctr_7d"] == np.float32(0.02)
    assert frame.loc[2, ["ad_ctr_1d", "ad_imps_7d"]].tolist() == pytest.approx([0.02, 0])
    assert frame.loc[0, ["age", "country", "device", "ad_ctr_1d", "uc_ctr_7d"]].tolist() == pytest.approx(
        [52, "DE", "ios", np.float32(0.1), np.float32(0.2)]
    )
    assert missing == {
        **{name: 1 for name in ("age", "country", "device")},
        **{name: 1 for name in defaults if name.startswith("user_")},
        **{name: 3 for name in defaults if name.startswith("ad_")},
        **{name: 1 for name in defaults if name.startswith("uc_")},
    }


def test_training_set_keeps_every_event_in_order_with_its_columns_and_types() -> None:
    store = _Store(_history())
    events = _events()
    frame, _ = training_set(store, SPEC, events)

    assert len(frame) == len(events)
    assert list(frame.columns) == [
        *(c for c in events.columns if c != "served_at"),
        *SPEC.feature_fields(),
    ]
    assert frame["ts"].tolist() == events["ts"].tolist()
    assert frame["clicked"].tolist() == [1, 0, 0, 1]
    assert frame["age"].dtype == np.int64
    assert frame["user_ctr_1d"].dtype == np.float32
    assert frame["ad_imps_7d"].dtype == np.int64
    # each view is asked once, for its unique (keys, timestamp) rows and all its fields
    asked = {view: (rows, refs) for view, rows, refs in store.asked}
    assert list(asked) == [fv.name for fv in SPEC.feature_views]
    rows, refs = asked["user_category_ctr"]
    assert list(rows.columns) == ["user_id", "category", "event_timestamp"]
    assert len(rows) == 2
    assert refs == [
        f"user_category_ctr:{name}" for name in ("uc_imps_1d", "uc_ctr_1d", "uc_imps_7d", "uc_ctr_7d")
    ]


def test_a_view_returned_twice_or_failing_is_a_feature_store_error_naming_it() -> None:
    with pytest.raises(
        FeatureStoreError, match=r"^point-in-time join of view 'ad_ctr' returned an entity row twice$"
    ):
        training_set(_Store(_history(), twice="ad_ctr"), SPEC, _events())
    broken = _history()
    del broken["user_ctr"]
    with pytest.raises(
        FeatureStoreError, match=r"^point-in-time join of view 'user_ctr' failed: 'user_ctr'$"
    ):
        training_set(_Store(broken), SPEC, _events())


def _spec_without_defaults(*names: str) -> ProblemSpec:
    raw = yaml.safe_load(SPEC_PATH.read_text())["problem"]
    for view in raw["feature_views"]:
        for name in names:
            view["fields"].get(name, {}).pop("default", None)
    return spec_from_mapping(raw)


def test_fill_defaults_counts_every_gap_and_leaves_a_feature_without_default_missing() -> None:
    spec = _spec_without_defaults("age", "device")
    frame = pd.DataFrame({name: [None, None] for name in spec.feature_fields()})
    frame.loc[0, ["age", "user_ctr_1d", "country"]] = 41, 0.07, "GB"
    original = frame.copy()

    filled, missing = fill_defaults(spec, frame)

    assert missing["age"] == 1
    assert missing["user_ctr_1d"] == 1
    assert missing["ad_ctr_1d"] == 2
    assert filled["age"].tolist()[0] == 41
    assert pd.isna(filled.loc[1, "age"])  # no default: stays missing (and is not cast to int64)
    assert pd.isna(filled.loc[1, "device"])
    assert filled.loc[1, "country"] == "US"
    assert filled["ad_ctr_1d"].tolist() == pytest.approx([0.02, 0.02])
    assert filled["ad_ctr_1d"].dtype == np.float32
    assert filled["ad_imps_1d"].dtype == np.int64
    assert filled["country"].dtype == object
    pd.testing.assert_frame_equal(frame, original)  # the caller's frame is not changed


def test_open_store_names_a_missing_or_invalid_configuration(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"feature_store\.config_file: .*nowhere\.yaml does not exist; check"
    ):
        open_store({"repo_path": str(tmp_path), "config_file": "nowhere.yaml"})
    (tmp_path / "feature_store.yaml").write_text("project: [not, a, name]\n")
    with pytest.raises(ConfigError, match=r"feature_store\.yaml: invalid Feast configuration: "):
        open_store(FeatureStoreParams(repo_path=tmp_path))
    assert FeatureStoreParams() == FeatureStoreParams(
        repo_path=Path("feature_repo"), config_file="feature_store.yaml", source_dir="../data/04_feature"
    )


class _Registry:
    """A Feast store's registry side: apply, list, materialize, online reads; records the calls."""

    project = "units"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    def apply(self, objects: list[Any]) -> None:
        if self.fail:
            raise RuntimeError("registry locked")
        self.calls.append(("apply", [type(o).__name__ for o in objects]))

    def list_entities(self) -> list[Any]:
        return [SimpleNamespace(name=n) for n in ("user", "ad")]

    def list_feature_views(self) -> list[Any]:
        return [
            SimpleNamespace(name="b_view", online=True),
            SimpleNamespace(name="offline_only", online=False),
            SimpleNamespace(name="a_view", online=True),
        ]

    def list_feature_services(self) -> list[Any]:
        return [SimpleNamespace(name="svc")]

    def materialize(self, start_date: datetime, end_date: datetime, feature_views: list[str]) -> None:
        if self.fail:
            raise RuntimeError("disk full")
        self.calls.append(("materialize", start_date, end_date, feature_views))

    def get_feature_service(self, name: str) -> str:
        return f"service:{name}"

    def get_online_features(self, features: Any, entity_rows: list[dict[str, Any]]) -> Any:
        self.calls.append(("online", features, entity_rows))
        return SimpleNamespace(to_dict=lambda: {"age": [35] * len(entity_rows)})


def test_apply_registers_the_spec_objects_and_lists_the_registry_sorted() -> None:
    store = _Registry()
    summary = apply_definitions(store, SPEC, "../data/04_feature")
    assert summary == {
        "project": "units",
        "entities": ["ad", "user"],
        "feature_views": ["a_view", "b_view", "offline_only"],
        "feature_services": ["svc"],
    }
    ((call, kinds),) = store.calls
    assert call == "apply"
    assert kinds.count("FeatureView") == len(SPEC.feature_views)
    with pytest.raises(FeatureStoreError, match=r"^feast apply failed for project 'units': registry locked$"):
        apply_definitions(_Registry(fail=True), SPEC, "../data/04_feature")


def test_materialize_reloads_every_online_view_from_the_start_and_names_a_failure() -> None:
    store, end = _Registry(), datetime(2026, 2, 1, tzinfo=UTC)
    assert materialize(store, SPEC, end) == {
        "project": "units",
        "end": "2026-02-01T00:00:00+00:00",
        "views": ["a_view", "b_view"],
    }
    assert store.calls == [("materialize", datetime(1970, 1, 2, tzinfo=UTC), end, ["a_view", "b_view"])]
    with pytest.raises(FeatureStoreError, match=r"^materialization failed: disk full$"):
        materialize(_Registry(fail=True), SPEC, end)


def test_online_features_reads_the_spec_service_for_plain_dict_rows() -> None:
    store = _Registry()
    rows = ({"user_id": 1}, {"user_id": 2})
    assert online_features(store, SPEC, rows) == {"age": [35, 35]}
    assert store.calls == [("online", f"service:{SPEC.feature_service}", [{"user_id": 1}, {"user_id": 2}])]


def test_fill_defaults_casts_a_float64_feature_to_float64() -> None:
    raw = yaml.safe_load(SPEC_PATH.read_text())["problem"]
    raw["feature_views"][1]["fields"]["user_ctr_1d"]["dtype"] = "float64"
    spec = spec_from_mapping(raw)
    frame = pd.DataFrame({name: pd.Series([None, 0.5], dtype=object) for name in spec.feature_fields()})
    filled, _ = fill_defaults(spec, frame)
    assert filled["user_ctr_1d"].dtype == np.float64
    assert filled["user_ctr_1d"].tolist() == [0.02, 0.5]
