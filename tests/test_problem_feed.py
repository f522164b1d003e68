"""The feed problem: its spec, its generator's truth and sessions, and its features.

The whole pipeline on feed (NDCG@10 per session gated against the oracle) runs in
tests/test_template.py, in a generated project on small data (templates/problems/feed/smoke.yml).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.errors import SpecError
from mlsd.evaluation import METRICS, check_metric_names
from mlsd.problems import feed, load_problem
from mlsd.spec import ProblemSpec, spec_from_mapping
from tests.conftest import PROBLEMS

FOLDER = PROBLEMS / "feed"
SMALL: dict[str, Any] = {"n_impressions": 20_000, "end": "2026-01-15T00:00:00Z"}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((FOLDER / name).read_text())
    return data


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return spec_from_mapping(_load("problem.yml")["problem"])


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    return _load("parameters_problem.yml")


@pytest.fixture(scope="module")
def world(spec: ProblemSpec, params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw tables and events of a small seeded world."""
    raw = feed.generate(spec, {**params["generator"], **SMALL})
    return {**raw, "events": feed.build_events(spec, raw)}


# --- spec ----------------------------------------------------------------------------------------


def test_spec_loads_with_session_groups_and_a_pointwise_tuning_target(spec: ProblemSpec) -> None:
    assert load_problem(spec) is feed
    assert spec.label.group == "session_id"
    assert spec.metrics[0].name == "auc"
    assert "ndcg_at_k" in [m.name for m in spec.metrics]
    check_metric_names(spec.metrics, spec.label.group)
    assert "session_id" not in spec.model_inputs()


def test_grouped_metric_without_label_group_fails_naming_both(spec: ProblemSpec) -> None:
    ungrouped = spec.model_copy(update={"label": spec.label.model_copy(update={"group": None})})
    with pytest.raises(SpecError, match=r"metrics\.ndcg_at_k.*label\.group"):
        check_metric_names(ungrouped.metrics, ungrouped.label.group)


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("session", "label.group: 'session' is not a column of events"),
        ("followed", "cannot also be a model input"),
    ],
)
def test_label_group_must_be_an_events_column_and_not_an_input(group: str, message: str) -> None:
    data = _load("problem.yml")["problem"]
    data["label"]["group"] = group
    with pytest.raises(ValueError, match=message):
        spec_from_mapping(data)


# --- generator -----------------------------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed(spec: ProblemSpec, params: dict[str, Any]) -> None:
    a = feed.generate(spec, {**params["generator"], **SMALL})
    b = feed.generate(spec, {**params["generator"], **SMALL})
    other = feed.generate(spec, {**params["generator"], **SMALL, "seed": 8})
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["impressions"]["true_p"].equals(other["impressions"]["true_p"])


def test_truth_is_a_probability_and_the_engagement_rate_is_on_target(
    world: dict[str, pd.DataFrame], params: dict[str, Any]
) -> None:
    events = world["events"]
    assert len(events) == SMALL["n_impressions"]
    assert events["true_p"].between(0, 1).all()
    target = params["generator"]["target_engagement"]
    assert events["true_p"].mean() == pytest.approx(target, rel=0.15)
    assert events["engaged"].mean() == pytest.approx(target, rel=0.2)
    # The label follows the truth: the top decile of true_p engages far more than the bottom one.
    decile = pd.qcut(events["true_p"], 10, labels=False)
    rates = events.groupby(decile)["engaged"].mean()
    assert rates.iloc[-1] > 4 * rates.iloc[0]


def test_sessions_are_one_user_in_consecutive_positions(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    sessions = events.groupby("session_id")
    assert (sessions["user_id"].nunique() == 1).all()
    sizes = sessions.size()
    assert sizes.mean() == pytest.approx(12, rel=0.2)
    ordered = events.sort_values(["session_id", "position"])
    expected = ordered.groupby("session_id").cumcount() + 1
    assert (ordered["position"] == expected).all()  # positions 1..n, each once
    assert (ordered.groupby("session_id")["ts"].is_monotonic_increasing).all()
    span = sessions["ts"].max() - sessions["ts"].min()
    assert span.max() < pd.Timedelta(hours=2)


def test_impressions_show_existing_posts_and_follows_drive_candidates(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    assert (events["post_age_h"] >= 0).all()
    # 60% of candidates come from follows; explore sometimes lands on a followed author too.
    assert 0.57 < events["followed"].mean() < 0.8
    # Followed authors engage more (the follow boost, and users follow authors they like).
    by_follow = events.groupby("followed")["true_p"].mean()
    assert by_follow[1] > by_follow[0]
    # Recency: fresh posts engage more than old ones.
    fresh = events["post_age_h"] < events["post_age_h"].quantile(0.25)
    old = events["post_age_h"] > events["post_age_h"].quantile(0.75)
    assert events.loc[fresh, "true_p"].mean() > events.loc[old, "true_p"].mean()


def test_oracle_ranks_sessions_far_better_than_chance(world: dict[str, pd.DataFrame]) -> None:
    events, ndcg = world["events"], METRICS["ndcg_at_k"]
    rng = np.random.default_rng(0)
    oracle = ndcg(events["engaged"], events["true_p"], events["session_id"])
    chance = ndcg(events["engaged"], rng.random(len(events)), events["session_id"])
    assert oracle > chance + 0.15


def test_feature_tables_are_point_in_time(
    spec: ProblemSpec, world: dict[str, pd.DataFrame], params: dict[str, Any]
) -> None:
    tables = feed.build_feature_tables(spec, world, world["events"], params["features"])
    for fv in spec.feature_views:
        assert set(fv.fields) <= set(tables[fv.source].columns), fv.name
    # A post's 1h snapshot counts only impressions in the hour before it, never at or after it.
    posts = tables["post_engagement"]
    row = posts.loc[posts["post_imps_1h"].idxmax()]
    events = world["events"]
    shown = events.loc[events["post_id"] == row["post_id"], "ts"]
    in_window = shown[
        (shown >= row["event_timestamp"] - pd.Timedelta(hours=1)) & (shown < row["event_timestamp"])
    ]
    assert row["post_imps_1h"] == len(in_window) > 0


@pytest.mark.parametrize("scenario", ["none", "covariate_shift", "concept_drift", "new_entities"])
def test_simulate_returns_scorable_requests(spec: ProblemSpec, params: dict[str, Any], scenario: str) -> None:
    requests, true_p = feed.simulate(spec, {**params["generator"], **SMALL}, 400, scenario, seed=3)
    assert len(requests) == len(true_p) == 400
    assert ((true_p >= 0) & (true_p <= 1)).all()
    fields = {*spec.serving.entity_keys, *spec.serving.context}
    assert all(set(r) == fields for r in requests)
    known_users = feed.FeedWorld.create(feed.GeneratorParams.model_validate({**params["generator"], **SMALL}))
    new = {r["user_id"] for r in requests} - set(known_users.users["user_id"])
    assert bool(new) == (scenario == "new_entities")


def test_simulated_covariate_shift_moves_inputs_and_not_the_truth(
    spec: ProblemSpec, params: dict[str, Any]
) -> None:
    base, _ = feed.simulate(spec, {**params["generator"], **SMALL}, 3000, "none", seed=3)
    shifted, _ = feed.simulate(spec, {**params["generator"], **SMALL}, 3000, "covariate_shift", seed=3)
    assert np.mean([r["followed"] for r in shifted]) < np.mean([r["followed"] for r in base]) - 0.2
    assert np.median([r["post_age_h"] for r in shifted]) > np.median([r["post_age_h"] for r in base])
