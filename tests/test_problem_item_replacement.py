"""item_replacement: its spec, its generator's truth and events, its point-in-time features, the
event metrics on planted cases, and a GBDT on the pair features that beats the logistic baseline,
nears the oracle and exports to ONNX with parity.

The whole pipeline (Feast, Ray, the registry, `bentoml serve`, monitoring) runs in
tests/test_template.py, in a generated project on small data (templates/problems/item_replacement/smoke.yml).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.evaluation import METRICS, check_gates, check_metric_names, evaluate
from mlsd.export import parity_report, to_onnx
from mlsd.problems import item_replacement as ir
from mlsd.problems import load_problem
from mlsd.spec import ProblemSpec, spec_from_mapping
from mlsd.training import get_family, model_frame
from tests.conftest import PROBLEMS

FOLDER = PROBLEMS / "item_replacement"
SMALL: dict[str, Any] = {"n_events": 12_000, "end": "2026-01-15T00:00:00Z"}


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
    raw = ir.generate(spec, {**params["generator"], **SMALL})
    return {**raw, "events": ir.build_events(spec, raw)}


@pytest.fixture(scope="module")
def tables(
    spec: ProblemSpec, world: dict[str, pd.DataFrame], params: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    return ir.build_feature_tables(spec, world, world["events"], params["features"])


# --- spec ----------------------------------------------------------------------------------------


def test_spec_groups_by_event_and_serves_pairs(spec: ProblemSpec) -> None:
    assert load_problem(spec) is ir
    assert spec.label.group == "event_id"
    assert [m.name for m in spec.metrics][:3] == ["auc", "mrr", "hit_at_k"]
    check_metric_names(spec.metrics, spec.label.group)
    assert spec.serving.entity_keys == ["original_id", "candidate_id"]
    inputs = spec.model_inputs()
    assert {"event_id", "accepted", "true_p"}.isdisjoint(inputs)
    assert {"same_brand", "same_aisle", "price_ratio", "size_ratio", "pair_accept_rate_28d"} <= set(inputs)


def test_generator_params_refuse_an_impossible_catalog(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"substitutes \(60\) must be fewer than products_per_aisle \(50\)"):
        ir.GeneratorParams.model_validate({**params["generator"], "substitutes": 60})
    with pytest.raises(ValueError, match=r"candidates_per_event \(13\) cannot exceed substitutes \(12\)"):
        ir.GeneratorParams.model_validate({**params["generator"], "candidates_per_event": 13})


# --- generator -----------------------------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed(spec: ProblemSpec, params: dict[str, Any]) -> None:
    small = {**params["generator"], **SMALL, "n_events": 1000}
    a, b = ir.generate(spec, small), ir.generate(spec, small)
    other = ir.generate(spec, {**small, "seed": 8})
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["offers"]["true_p"].equals(other["offers"]["true_p"])


def test_truth_is_a_probability_on_target_and_drives_the_label(
    world: dict[str, pd.DataFrame], params: dict[str, Any]
) -> None:
    events = world["events"]
    assert len(events) == SMALL["n_events"] * params["generator"]["candidates_per_event"]
    assert events["true_p"].between(0, 1).all()
    target = params["generator"]["target_acceptance"]
    assert events["true_p"].mean() == pytest.approx(target, rel=0.1)
    assert events["accepted"].mean() == pytest.approx(target, rel=0.1)
    decile = pd.qcut(events["true_p"], 10, labels=False)
    rates = events.groupby(decile)["accepted"].mean()
    assert rates.iloc[-1] > 5 * rates.iloc[0]
    accepted = events["accepted_ts"].notna()
    assert (events.loc[accepted, "accepted_ts"] > events.loc[accepted, "ts"]).all()
    assert accepted.equals(events["accepted"] == 1)


def test_events_offer_distinct_listed_substitutes(spec: ProblemSpec, world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    per_event = events.groupby("event_id")
    assert (per_event["original_id"].nunique() == 1).all()
    assert (per_event["ts"].nunique() == 1).all()
    assert (per_event["candidate_id"].nunique() == per_event.size()).all()
    assert (events["candidate_id"] != events["original_id"]).all()
    # Candidates come from the original's substitute list: mostly its aisle, the rest its department.
    products = world["products"].set_index("product_id")
    same_dept = (
        products.loc[events["original_id"], "dept"].to_numpy()
        == products.loc[events["candidate_id"], "dept"].to_numpy()
    )
    assert same_dept.all()
    assert 0.65 < events["same_aisle"].mean() < 0.85


def test_pair_attributes_are_the_catalog_s(world: dict[str, pd.DataFrame]) -> None:
    events, products = world["events"], world["products"].set_index("product_id")
    row = events.iloc[123]
    o, c = products.loc[row["original_id"]], products.loc[row["candidate_id"]]
    assert row["price_ratio"] == pytest.approx(c["price"] / o["price"])
    assert row["size_ratio"] == pytest.approx(c["size"] / o["size"])
    assert row["same_brand"] == int(o["brand_id"] == c["brand_id"])
    assert row["same_aisle"] == int(o["aisle_id"] == c["aisle_id"])


def test_truth_follows_the_attributes(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    by_brand = events.groupby("same_brand")["true_p"].mean()
    assert by_brand[1] > by_brand[0] + 0.05
    similar = events["price_ratio"].between(0.9, 1.1) & events["size_ratio"].between(0.8, 1.25)
    dearer = events["price_ratio"] > 1.5
    cheaper = events["price_ratio"] < 1 / 1.5
    p = events["true_p"]
    # A dearer replacement hurts more than an equally cheaper one.
    assert p[similar].mean() > p[cheaper].mean() > p[dearer].mean()


# --- metrics on planted cases ------------------------------------------------------------------


def test_event_metrics_on_a_planted_case() -> None:
    # Event 1: the accepted candidate is scored first; event 2: second; event 3: tied with two
    # rejected ones (expected reciprocal rank (1 + 1/2 + 1/3) / 3); event 4: nothing accepted.
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    score = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.1, 0.5, 0.5, 0.5, 0.3, 0.6])
    event = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4])
    third = (1 + 1 / 2 + 1 / 3) / 3
    assert METRICS["mrr"](y, score, event) == pytest.approx((1 + 1 / 2 + third) / 3)
    assert METRICS["hit_at_k"](y, score, event, k=1) == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert METRICS["hit_at_k"](y, score, event, k=2) == pytest.approx((1 + 1 + 2 / 3) / 3)


def test_oracle_ranks_events_far_better_than_chance(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    y, groups = events["accepted"], events["event_id"]
    chance = np.random.default_rng(0).random(len(events))
    assert METRICS["mrr"](y, events["true_p"], groups) > METRICS["mrr"](y, chance, groups) + 0.15
    assert METRICS["hit_at_k"](y, events["true_p"], groups, k=1) > 0.65


# --- features ------------------------------------------------------------------------------------


def test_feature_tables_are_point_in_time(
    spec: ProblemSpec, world: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame]
) -> None:
    for fv in spec.feature_views:
        assert set(fv.fields) <= set(tables[fv.source].columns), fv.name
    # A pair's snapshot counts the offers of the 28 days before it and the acceptances known by then.
    pairs = tables["pair_history"]
    row = pairs.loc[pairs["pair_offers_28d"].idxmax()]
    events = world["events"]
    mine = events[
        (events["original_id"] == row["original_id"]) & (events["candidate_id"] == row["candidate_id"])
    ]
    at = row["event_timestamp"]
    offered = mine[(mine["ts"] >= at - pd.Timedelta(days=28)) & (mine["ts"] < at)]
    accepted = mine["accepted_ts"].between(at - pd.Timedelta(days=28), at, inclusive="left").sum()
    assert row["pair_offers_28d"] == len(offered) > 1
    assert row["pair_accept_rate_28d"] == pytest.approx((accepted + 0.3 * 10) / (len(offered) + 10), rel=1e-6)


def _training_frame(spec: ProblemSpec, events: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Events joined to the latest feature rows at or before them within each view's ttl, missing
    ones at the spec default: the point-in-time join Feast does in the pipeline."""
    frame = events.sort_values("ts", kind="stable").reset_index(drop=True)
    for fv in spec.feature_views:
        keys = [spec.entity(e).join_key for e in fv.entities]
        table = tables[fv.source].sort_values("event_timestamp")
        frame = pd.merge_asof(
            frame,
            table[[*keys, "event_timestamp", *fv.fields]],
            left_on="ts",
            right_on="event_timestamp",
            by=keys,
            tolerance=pd.Timedelta(fv.ttl) if fv.ttl else None,
        ).drop(columns="event_timestamp")
        frame = frame.fillna({name: field.default for name, field in fv.fields.items()})
    return frame


def test_gbdt_beats_the_baseline_nears_the_oracle_and_exports_with_parity(
    spec: ProblemSpec, world: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame]
) -> None:
    frame = _training_frame(spec, world["events"], tables)
    cut = frame["ts"].max() - pd.Timedelta(days=4)
    train, holdout = frame[frame["ts"] < cut], frame[frame["ts"] >= cut]
    inputs = spec.model_input_schema()
    x_train, x_hold = model_frame(inputs, train), model_frame(inputs, holdout)
    scores = {"oracle": holdout["true_p"].to_numpy()}
    fitted = {}
    for role, model in (("model", spec.model), ("baseline", spec.baseline)):
        pipeline = get_family(model.family).build(inputs, model.params, 7, 1)
        fitted[role] = pipeline.fit(x_train, train["accepted"])
        scores[role] = pipeline.predict_proba(x_hold)[:, 1]
    results = evaluate(spec.metrics, holdout["accepted"].to_numpy(), scores, holdout["event_id"].to_numpy())
    gates = check_gates(spec.metrics, results["model"], results["baseline"], results["oracle"])
    assert all(g.passed for g in gates), [g.detail for g in gates]
    assert results["model"]["auc"] > results["baseline"]["auc"] + 0.005
    # The ONNX graph gives the native probabilities; one from the baseline does not.
    graph = to_onnx(fitted["model"], inputs)
    report = parity_report(graph, fitted["model"], inputs, x_hold, tolerance=1e-5)
    assert report["passed"], report
    assert not parity_report(
        to_onnx(fitted["baseline"], inputs), fitted["model"], inputs, x_hold, tolerance=1e-5
    )["passed"]


# --- simulation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["none", "covariate_shift", "concept_drift", "new_entities"])
def test_simulate_returns_scorable_requests(spec: ProblemSpec, params: dict[str, Any], scenario: str) -> None:
    world = {**params["generator"], **SMALL}
    requests, true_p = ir.simulate(spec, world, 402, scenario, seed=3)
    assert len(requests) == len(true_p) == 402
    assert ((true_p >= 0) & (true_p <= 1)).all()
    fields = {*spec.serving.entity_keys, *spec.serving.context}
    assert all(set(r) == fields for r in requests)
    known = set(ir.ReplacementWorld.create(ir.GeneratorParams.model_validate(world)).products["product_id"])
    new = {r["candidate_id"] for r in requests} - known
    assert bool(new) == (scenario == "new_entities")
    assert {r["original_id"] for r in requests} <= known


def test_simulated_shifts_move_inputs_or_truth(spec: ProblemSpec, params: dict[str, Any]) -> None:
    world = {**params["generator"], **SMALL}
    base, p_base = ir.simulate(spec, world, 3000, "none", seed=3)
    shifted, _ = ir.simulate(spec, world, 3000, "covariate_shift", seed=3)
    drifted, p_drift = ir.simulate(spec, world, 3000, "concept_drift", seed=3)
    aisle = np.mean([r["same_aisle"] for r in base])
    assert np.mean([r["same_aisle"] for r in shifted]) < aisle - 0.15
    assert drifted == base  # concept drift: the same requests, another truth
    assert np.abs(p_drift - p_base).mean() > 0.03
