"""Feast on real stores: point-in-time correctness, and online reads on SQLite, Redis + Postgres."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlsd.features import FeatureStoreParams, online_features, open_store, training_set
from mlsd.spec import ProblemSpec, load_spec
from tests.conftest import kedro_run

pytestmark = pytest.mark.slow


def _spec(project: Path) -> ProblemSpec:
    return load_spec(project / "conf" / "base" / "problem.yml")


def _latest(project: Path, source: str, key: str) -> pd.DataFrame:
    """The newest snapshot per entity: what the online store must serve."""
    table = pd.read_parquet(project / "data" / "04_feature" / f"{source}.parquet")
    return table.sort_values("event_timestamp").groupby(key).tail(1).set_index(key)


def test_feature_timestamped_after_the_event_never_reaches_the_training_set(project_copy: Path) -> None:
    spec = _spec(project_copy)
    events = pd.read_parquet(project_copy / "data" / "02_intermediate" / "events.parquet")
    event = events.iloc[[len(events) // 2]].reset_index(drop=True)
    user, ts = int(event.loc[0, "user_id"]), event.loc[0, "ts"]
    path = project_copy / "data" / "04_feature" / "user_ctr.parquet"
    table = pd.read_parquet(path)
    planted = table.iloc[:2].copy()
    planted["user_id"] = user
    # One row one second after the event (future: must not be used), one a second before (must).
    planted["event_timestamp"] = [ts + pd.Timedelta(seconds=1), ts - pd.Timedelta(seconds=1)]
    planted["user_ctr_7d"] = pd.Series([0.999, 0.777], dtype="float32").to_numpy()
    planted["user_imps_7d"] = [99_999, 77_777]
    pd.concat([table, planted], ignore_index=True).to_parquet(path)

    store = open_store(FeatureStoreParams(repo_path=project_copy / "feature_repo"))
    built, _ = training_set(store, spec, event)

    assert built.loc[0, "user_imps_7d"] == 77_777, "the row known before the event must be used"
    assert built.loc[0, "user_ctr_7d"] == pytest.approx(0.777)
    assert 99_999 not in built["user_imps_7d"].tolist()

    # The same planted future row, on the whole events table through the pipeline's own node.
    future_only = pd.concat([table, planted.iloc[:1]], ignore_index=True)
    future_only.to_parquet(path)
    result = kedro_run(
        project_copy, "--from-nodes", "apply_feature_store", "--to-nodes", "accept_training_set"
    )
    assert result.returncode == 0, result.output[-3000:]
    training = pd.read_parquet(project_copy / "data" / "05_model_input" / "training_set.parquet")
    row = training.loc[training["imp_id"] == event.loc[0, "imp_id"]].iloc[0]
    assert row["user_imps_7d"] != 99_999
    assert 99_999 not in training["user_imps_7d"].tolist()


def test_events_sharing_keys_and_time_all_get_their_features(built_project: Path) -> None:
    """Regression: Feast's file store joined only one of several entity rows with equal keys and time."""
    spec = _spec(built_project)
    events = pd.read_parquet(built_project / "data" / "02_intermediate" / "events.parquet")
    ctr = pd.read_parquet(built_project / "data" / "04_feature" / "ad_ctr.parquet")
    event = events[events["ts"] > ctr["event_timestamp"].min() + pd.Timedelta(days=2)].iloc[[0]]
    twins = pd.concat([event] * 3, ignore_index=True)
    twins["imp_id"] = [-1, -2, -3]
    store = open_store(FeatureStoreParams(repo_path=built_project / "feature_repo"))

    built, missing = training_set(store, spec, twins)

    assert missing["ad_imps_7d"] == 0, "every twin must find the ad's snapshot"
    assert built["imp_id"].tolist() == [-1, -2, -3]
    for name in spec.feature_fields():
        assert built[name].nunique() == 1, name


def _assert_online_matches_latest_snapshot(project: Path, store_params: FeatureStoreParams) -> None:
    spec = _spec(project)
    store = open_store(store_params)
    users = _latest(project, "user_ctr", "user_id").index[:5].tolist()
    profile = pd.read_parquet(project / "data" / "04_feature" / "user_profile.parquet").set_index("user_id")
    ctr = _latest(project, "user_ctr", "user_id")
    ads = _latest(project, "ad_ctr", "ad_id")
    ad = int(ads.index[0])
    rows = [{"user_id": u, "ad_id": ad, "category": "travel"} for u in users]
    rows.append({"user_id": 10**9, "ad_id": ad, "category": "travel"})  # an unknown user

    got = online_features(store, spec, rows)

    for i, user in enumerate(users):
        assert got["age"][i] == profile.loc[user, "age"]
        assert got["device"][i] == profile.loc[user, "device"]
        assert got["user_imps_7d"][i] == ctr.loc[user, "user_imps_7d"]
        assert got["user_ctr_7d"][i] == pytest.approx(ctr.loc[user, "user_ctr_7d"], rel=1e-6)
        assert got["ad_ctr_7d"][i] == pytest.approx(ads.loc[ad, "ad_ctr_7d"], rel=1e-6)
    assert got["age"][-1] is None
    assert got["user_ctr_7d"][-1] is None


def test_online_store_serves_the_materialized_values_sqlite(built_project: Path) -> None:
    _assert_online_matches_latest_snapshot(
        built_project, FeatureStoreParams(repo_path=built_project / "feature_repo")
    )


@pytest.mark.services
def test_production_profile_on_real_redis_and_postgres(
    production_project: Path, redis_url: str, postgres_url: str
) -> None:
    import psycopg
    import redis

    project_copy = production_project

    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        views = conn.execute("SELECT feature_view_name FROM feature_views ORDER BY 1").fetchall()
    assert [v[0] for v in views] == ["ad_ctr", "user_category_ctr", "user_ctr", "user_profile"]
    address, db = redis_url.split(",db=")
    host, port = address.split(":")
    assert redis.Redis(host=host, port=int(port), db=int(db)).dbsize() > 0
    params = FeatureStoreParams(
        repo_path=project_copy / "feature_repo", config_file="feature_store.production.yaml"
    )
    _assert_online_matches_latest_snapshot(project_copy, params)
