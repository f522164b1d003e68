"""The contact_ranking problem: its spec, its generator's truth, point-in-time decayed counts, the
Interactions Rank baseline, grouped metrics on a planted case, ONNX parity and simulated traffic.

The whole pipeline (kedro run -> gates -> registry -> bentoml serve -> monitoring) runs in
tests/test_template.py, in a generated project on small data (templates/problems/contact_ranking/smoke.yml).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.errors import SpecError
from mlsd.evaluation import METRICS, check_metric_names
from mlsd.export import parity_report, to_onnx
from mlsd.problems import contact_ranking as cr
from mlsd.problems import load_problem
from mlsd.spec import ProblemSpec, spec_from_mapping
from mlsd.training import labels, model_frame
from mlsd.training.families import get_family
from tests.conftest import PROBLEMS

FOLDER = PROBLEMS / "contact_ranking"
SMALL: dict[str, Any] = {"n_users": 100, "end": "2026-01-15T00:00:00Z"}
PAIR = ["user_id", "contact_id"]


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
    """Raw tables, events and feature tables of a small seeded world."""
    raw = cr.generate(spec, {**params["generator"], **SMALL})
    events = cr.build_events(spec, raw)
    return {**raw, "events": events, **cr.build_feature_tables(spec, raw, events, params["features"])}


def joined(world: dict[str, pd.DataFrame], spec: ProblemSpec) -> pd.DataFrame:
    """Events with the latest snapshot at or before each event (what Feast's join returns within ttl)."""
    events = world["events"].sort_values("ts")
    for view in spec.feature_views:
        table = world[view.source].sort_values("event_timestamp")
        keys = [spec.entity(e).join_key for e in view.entities]
        events = pd.merge_asof(events, table, left_on="ts", right_on="event_timestamp", by=keys)
        events = events.drop(columns="event_timestamp")
    return events.fillna({name: col.default for name, col in spec.feature_fields().items()})


# --- spec ----------------------------------------------------------------------------------------


def test_spec_groups_by_email_and_names_its_baseline_family(spec: ProblemSpec) -> None:
    assert load_problem(spec) is cr
    assert spec.label.group == "msg_id"
    assert [m.name for m in spec.metrics][:3] == ["auc", "mrr", "hit_at_k"]
    check_metric_names(spec.metrics, spec.label.group)
    assert "msg_id" not in spec.model_inputs()
    family = get_family(spec.baseline.family)
    assert isinstance(
        family.build(spec.model_input_schema(), spec.baseline.params, 0, 1), cr.InteractionsRank
    )


def test_mrr_without_label_group_fails_naming_both(spec: ProblemSpec) -> None:
    with pytest.raises(SpecError, match=r"metrics\.mrr.*label\.group"):
        check_metric_names(spec.metrics, None)


# --- generator -----------------------------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed(spec: ProblemSpec, params: dict[str, Any]) -> None:
    a = cr.generate(spec, {**params["generator"], **SMALL})
    b = cr.generate(spec, {**params["generator"], **SMALL})
    other = cr.generate(spec, {**params["generator"], **SMALL, "seed": 8})
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["contact_rates"]["true_rate"].equals(other["contact_rates"]["true_rate"])


def test_each_email_is_one_group_with_one_recipient_among_the_address_book(
    world: dict[str, pd.DataFrame],
) -> None:
    events, groups = world["events"], world["events"].groupby("msg_id")
    assert (groups["sent"].sum() == 1).all()
    assert (groups["user_id"].nunique() == 1).all()
    np.testing.assert_allclose(groups["true_p"].sum(), 1.0)
    book = world["contacts"].merge(events[[*PAIR, "ts"]], on=PAIR)
    assert (book["added_ts"] <= book["ts"]).all()
    outgoing = world["messages"].query("direction == 'out'")
    assert events["msg_id"].isin(outgoing["msg_id"]).all()
    assert 15 < groups.size().mean() < 25


def test_recipients_are_drawn_at_the_true_shares(world: dict[str, pd.DataFrame]) -> None:
    """The truth is right: within each band of true_p, the share of candidates that got the email
    is the band's mean true_p (the generator wrote the messages from these rates)."""
    events = world["events"]
    band = pd.cut(events["true_p"], [0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0])
    table = events.groupby(band, observed=True).agg(
        rate=("sent", "mean"), truth=("true_p", "mean"), n=("sent", "size")
    )
    table = table.loc[table["n"] > 500]
    assert len(table) >= 5
    np.testing.assert_allclose(table["rate"], table["truth"], rtol=0.15, atol=0.005)


def test_rates_drift_so_recent_history_says_more(world: dict[str, pd.DataFrame]) -> None:
    rates = world["contact_rates"].pivot_table(index=PAIR, columns="day", values="true_rate").dropna()
    log = np.log(rates.to_numpy())
    next_day = np.corrcoef(log[:, 0], log[:, 1])[0, 1]
    three_weeks = np.corrcoef(log[:, 0], log[:, -1])[0, 1]
    assert next_day > 0.95
    assert three_weeks < next_day - 0.1
    # The truth is the email's own day: the same contacts' rates of a week later rank worse.
    events = world["events"]
    lagged = world["contact_rates"].assign(day=world["contact_rates"]["day"] - pd.Timedelta(days=7))
    later = events.assign(day=events["ts"].dt.floor("D")).merge(lagged, on=[*PAIR, "day"], how="inner")
    later = later.loc[later.groupby("msg_id")["sent"].transform("sum") == 1]
    mrr, y, groups = METRICS["mrr"], later["sent"], later["msg_id"]
    assert mrr(y, later["true_p"], groups) > mrr(y, later["true_rate"], groups) + 0.02


def test_new_contacts_have_no_history_and_are_written_to(world: dict[str, pd.DataFrame]) -> None:
    events, start = world["events"], world["messages"]["ts"].min().floor("D")
    late = world["contacts"].loc[world["contacts"]["added_ts"] > start + pd.Timedelta(days=14)]
    first_sent = world["messages"].merge(world["recipients"], on="msg_id").groupby(PAIR)["ts"].min()
    added = late.set_index(PAIR)["added_ts"]
    common = added.index.intersection(first_sent.index)
    assert len(common) > 20
    assert (first_sent.loc[common] >= added.loc[common]).all()
    positives = events.loc[events["sent"] == 1].merge(late[PAIR], on=PAIR)
    assert len(positives) > 50


# --- features ------------------------------------------------------------------------------------


def test_decayed_counts_match_a_brute_force_sum_over_earlier_messages(world: dict[str, pd.DataFrame]) -> None:
    table = world["pair_interactions"]
    row = table.loc[table["out_decay_7d"].idxmax()]
    messages = world["messages"].merge(world["recipients"], on="msg_id")
    mine = messages.loc[
        (messages["user_id"] == row["user_id"]) & (messages["contact_id"] == row["contact_id"])
    ]
    for direction in ("out", "in"):
        before = mine.loc[(mine["direction"] == direction) & (mine["ts"] < row["event_timestamp"])]
        age_days = (row["event_timestamp"] - before["ts"]).dt.total_seconds() / 86400
        for half_life in (2, 7, 28):
            expected = float((0.5 ** (age_days / half_life)).sum())
            assert row[f"{direction}_decay_{half_life}d"] == pytest.approx(expected, rel=1e-5)
    earlier = mine.loc[mine["ts"] < row["event_timestamp"], "ts"].max()
    assert row["days_since_last"] == pytest.approx((row["event_timestamp"] - earlier).total_seconds() / 86400)


def test_a_planted_future_message_changes_no_earlier_snapshot(
    spec: ProblemSpec, world: dict[str, pd.DataFrame], params: dict[str, Any]
) -> None:
    """Leak check: one extra email at T changes only snapshots after T, by exactly its weight."""
    user, contact = world["contacts"].iloc[0][PAIR]
    planted_at = pd.Timestamp("2026-01-05 18:00", tz="UTC")
    msg_id = int(world["messages"]["msg_id"].max()) + 1
    raw = {name: world[name] for name in ("contacts", "messages", "recipients", "contact_rates")}
    planted = {
        **raw,
        "messages": pd.concat(
            [
                raw["messages"],
                pd.DataFrame(
                    {"msg_id": [msg_id], "user_id": [user], "ts": [planted_at], "direction": ["out"]}
                ),
            ],
            ignore_index=True,
        ),
        "recipients": pd.concat(
            [raw["recipients"], pd.DataFrame({"msg_id": [msg_id], "contact_id": [contact]})],
            ignore_index=True,
        ),
    }
    after = cr.build_feature_tables(spec, planted, world["events"], params["features"])["pair_interactions"]
    before = world["pair_interactions"]
    keys = [*PAIR, "event_timestamp"]
    diff = before.merge(after, on=keys, suffixes=("", "_new"))
    changed = diff.loc[(diff["out_decay_7d_new"] - diff["out_decay_7d"]).abs() > 1e-6]
    assert (changed[PAIR] == [user, contact]).all(axis=None)
    assert changed["event_timestamp"].min() == pd.Timestamp("2026-01-06", tz="UTC")
    age_days = (changed["event_timestamp"] - planted_at).dt.total_seconds() / 86400
    np.testing.assert_allclose(
        changed["out_decay_7d_new"] - changed["out_decay_7d"], 0.5 ** (age_days / 7), rtol=1e-4
    )


def test_every_candidate_has_that_days_snapshot_so_no_feature_is_defaulted(
    world: dict[str, pd.DataFrame],
) -> None:
    """Each address-book pair has a row every day from the day it was added (no messages yet:
    zero counts), so the defaults are only for pairs the store never saw (a new user)."""
    events = world["events"].assign(event_timestamp=world["events"]["ts"].dt.floor("D"))
    found = events.merge(
        world["pair_interactions"], on=[*PAIR, "event_timestamp"], how="left", indicator=True
    )
    assert (found["_merge"] == "both").all()
    silent = found["days_since_last"] == cr.MAX_DAYS_SINCE
    assert silent.any()
    assert (found.loc[silent, ["out_decay_28d", "in_decay_28d"]] == 0).all(axis=None)
    assert (found["days_in_book"] >= 0).all()


# --- baseline, metrics, model --------------------------------------------------------------------


def test_interactions_rank_weighs_outgoing_and_keeps_its_order_after_fitting() -> None:
    frame = pd.DataFrame({"out_decay_7d": [1.0, 0.0, 0.0, 3.0], "in_decay_7d": [0.0, 1.5, 0.0, 0.0]})
    model = cr.InteractionsRank(out_weight=2.0).fit(frame, np.array([1, 0, 0, 1]))
    proba = model.predict_proba(frame)[:, 1]
    assert list(np.argsort(-proba)) == [3, 0, 1, 2]  # 2 x 3, 2 x 1 > 1.5 received, > nothing
    with pytest.raises(SpecError, match="out_decay_7d"):
        model.predict_proba(frame.drop(columns="out_decay_7d"))


def test_grouped_metrics_on_a_planted_case() -> None:
    """Two emails: the recipient ranked 2nd in the first and 1st in the second."""
    y = np.array([0, 1, 0, 1, 0])
    score = np.array([0.9, 0.5, 0.1, 0.8, 0.3])
    groups = np.array([1, 1, 1, 2, 2])
    assert METRICS["mrr"](y, score, groups) == pytest.approx((1 / 2 + 1) / 2)
    assert METRICS["hit_at_k"](y, score, groups, k=1) == pytest.approx(0.5)
    assert METRICS["hit_at_k"](y, score, groups, k=2) == pytest.approx(1.0)


def test_oracle_beats_the_gbdt_which_beats_interactions_rank_and_chance(
    spec: ProblemSpec, world: dict[str, pd.DataFrame]
) -> None:
    table = joined(world, spec)
    holdout_start = table["ts"].max() - pd.Timedelta(days=4)
    train, holdout = table.loc[table["ts"] < holdout_start], table.loc[table["ts"] >= holdout_start]
    inputs = spec.model_input_schema()
    fitted = {}
    for role, model in (("model", spec.model), ("baseline", spec.baseline)):
        pipeline = get_family(model.family).build(inputs, model.params, 7, 1)
        fitted[role] = pipeline.fit(model_frame(inputs, train), labels(spec, train))
    y, groups = labels(spec, holdout), holdout["msg_id"].to_numpy()
    scores = {role: m.predict_proba(model_frame(inputs, holdout))[:, 1] for role, m in fitted.items()}
    scores["oracle"] = holdout["true_p"].to_numpy()
    scores["chance"] = np.random.default_rng(0).random(len(holdout))
    mrr = {role: METRICS["mrr"](y, s, groups) for role, s in scores.items()}
    assert mrr["oracle"] > mrr["model"] > mrr["baseline"] > mrr["chance"] + 0.2
    assert mrr["oracle"] - mrr["model"] < 0.08
    # The exported graph scores like the native model (the pipeline's parity gate).
    onnx_model = to_onnx(fitted["model"], inputs, name=spec.name)
    parity = parity_report(onnx_model, fitted["model"], inputs, model_frame(inputs, holdout), tolerance=1e-5)
    assert parity["passed"], parity


# --- simulated traffic ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["none", "covariate_shift", "concept_drift", "new_entities"])
def test_simulate_returns_scorable_requests(spec: ProblemSpec, params: dict[str, Any], scenario: str) -> None:
    requests, true_p = cr.simulate(spec, {**params["generator"], **SMALL}, 400, scenario, seed=3)
    assert len(requests) == len(true_p) == 400
    assert ((true_p > 0) & (true_p <= 1)).all()
    assert all(set(r) == set(spec.serving.entity_keys) for r in requests)
    new = {r["user_id"] for r in requests} - set(range(1, SMALL["n_users"] + 1))
    assert bool(new) == (scenario == "new_entities")


def test_simulated_covariate_shift_picks_rarely_used_contacts(
    spec: ProblemSpec, params: dict[str, Any]
) -> None:
    world = {**params["generator"], **SMALL}
    base, base_p = cr.simulate(spec, world, 2000, "none", seed=3)
    _, shifted_p = cr.simulate(spec, world, 2000, "covariate_shift", seed=3)
    drifted, drifted_p = cr.simulate(spec, world, 2000, "concept_drift", seed=3)
    assert np.median(shifted_p) < np.median(base_p) / 2
    assert drifted == base  # concept drift: the same requests, another truth
    assert np.corrcoef(np.log(base_p), np.log(drifted_p))[0, 1] < 0.9
