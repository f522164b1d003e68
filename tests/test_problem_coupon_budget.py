"""coupon_budget, the uplift-under-a-budget archetype: generator truth, uplift metrics on planted
cases, the T-learner against its linear baseline and the oracle, one ONNX graph for tau with
parity, the serving and monitoring shape, and (slow) `kedro run` -> gates -> batch campaign."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from mlsd.errors import SpecError, TrainingError
from mlsd.evaluation.uplift import (
    UpliftHoldout,
    allocate,
    auuc,
    budget_used,
    incremental_share,
    qini,
    uplift_report,
)
from mlsd.export import UPLIFT_OUTPUT, onnx_feeds, onnx_scores, parity_report, session, uplift_to_onnx
from mlsd.monitoring.canary import NO_AUTOMATIC_VERDICT
from mlsd.problems import coupon_budget
from mlsd.serving import api_models
from mlsd.serving.rollout import served_outputs
from mlsd.spec import load_spec, spec_from_mapping
from mlsd.spec.schema import NON_PROBABILITY_TASKS
from mlsd.training import TLearner, model_frame
from tests.conftest import PROBLEMS, catalog_project, kedro_run

SPEC = load_spec(PROBLEMS / "coupon_budget" / "problem.yml")
SMALL = {"n_users": 6000, "users_per_day": 2500, "days": 10, "end": "2026-01-15T00:00:00"}
INPUTS = SPEC.model_input_schema()


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    raw = coupon_budget.generate(SPEC, SMALL)
    events = coupon_budget.build_events(SPEC, raw)
    tables = coupon_budget.build_feature_tables(SPEC, raw, events, {})
    return {**raw, **tables, "events": events}


def _joined(world: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Events with the features visible at their time (the day's snapshot, the profile)."""
    events = world["events"].assign(event_timestamp=world["events"]["ts"].dt.floor("D"))
    activity = world["user_activity"]
    profile = world["user_profile"].drop(columns="event_timestamp")
    return events.merge(activity, on=["user_id", "event_timestamp"]).merge(profile, on="user_id")


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = frame["ts"].max() - pd.Timedelta(days=2)
    return frame[frame["ts"] < cut], frame[frame["ts"] >= cut]


def _holdout(rows: pd.DataFrame) -> UpliftHoldout:
    return UpliftHoldout.from_share(
        rows["converted"], rows["treated"], rows["true_tau"], rows["coupon_cost"], 0.3
    )


def test_the_experiment_is_randomized_and_the_truth_drives_it(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    assert set(events.columns) == set(SPEC.tables["campaign_events"].columns)
    assert 0.45 < events["treated"].mean() < 0.55
    # Treatment is independent of the user: the arms look alike on what drives conversion.
    frame = _joined(world)
    assert len(frame) == len(events)
    arms = frame.groupby("treated")[["sessions_7d", "days_since_purchase", "basket"]].mean()
    assert np.allclose(arms.loc[0], arms.loc[1], rtol=0.05)
    # The observed effect (treated - control conversion) grows with the stored true effect.
    quartile = pd.qcut(frame["true_tau"], 4, labels=False)
    rates = frame.groupby([quartile, "treated"])["converted"].mean().unstack()
    observed = rates[1] - rates[0]
    assert observed.is_monotonic_increasing, observed
    assert abs(observed.mean() - frame["true_tau"].mean()) < 0.02
    # Sleeping dogs exist: some users are put off by a coupon.
    assert (frame["true_tau"] < 0).mean() > 0.05
    assert SPEC.label.truth not in SPEC.model_inputs()
    # Same parameters, same world.
    again = coupon_budget.build_events(SPEC, coupon_budget.generate(SPEC, SMALL))
    pd.testing.assert_frame_equal(again, events)


def test_the_truth_is_a_function_of_the_served_features(world: dict[str, pd.DataFrame]) -> None:
    """tau depends on the snapshot a request would read, so a model can learn it: users with the
    same features on the same day (and the same unobserved noise) get the same effect."""
    p = coupon_budget.GeneratorParams.model_validate(SMALL)
    truth = coupon_budget.CouponWorld.create(p)
    frame = _joined(world)
    user_idx = frame["user_id"].to_numpy() - 1
    day = ((frame["event_timestamp"] - truth.start) // pd.Timedelta(days=1)).to_numpy()
    assert (frame["sessions_7d"].to_numpy() == truth.sessions[user_idx, day]).all()
    assert (frame["tenure_days"].to_numpy() == truth.tenure_days(user_idx, day)).all()
    p0, p1 = truth.probabilities(user_idx, day, p.effect_strength)
    assert np.allclose(p1 - p0, frame["true_tau"])
    assert (
        world["user_activity"]["event_timestamp"] <= world["user_activity"]["event_timestamp"].max()
    ).all()


def test_allocate_is_greedy_by_effect_per_cost_until_the_budget_is_spent() -> None:
    score = np.array([0.10, 0.30, -0.05, 0.20, 0.0, 0.08])
    cost = np.array([1.0, 2.0, 1.0, 4.0, 1.0, 1.0])
    # ratios: 0.10, 0.15, <0, 0.05, 0, 0.08 -> order 1, 0, 5, 3; never the non-positive ones.
    assert allocate(score, cost, 3.0).tolist() == [True, True, False, False, False, False]
    assert allocate(score, cost, 4.0).tolist() == [True, True, False, False, False, True]
    # Row 3 (cost 4) does not fit in 7 - 4 = 3 left: the campaign stops there.
    assert allocate(score, cost, 7.0).tolist() == [True, True, False, False, False, True]
    assert allocate(score, cost, 100.0).tolist() == [True, True, False, True, False, True]
    assert not allocate(score, cost, 0.5).any()


def test_incremental_share_and_budget_on_a_planted_holdout() -> None:
    tau = np.array([0.4, 0.3, 0.2, 0.1, -0.1, 0.0])
    cost = np.ones(6)
    holdout = UpliftHoldout(np.array([1, 0, 1, 0, 1, 0]), np.array([1, 0, 1, 0, 1, 0]), tau, cost, 2.0)
    assert incremental_share(holdout, tau) == 1.0
    assert incremental_share(holdout, -tau) == pytest.approx(-0.1 / 0.7)  # the worst two
    assert incremental_share(holdout, np.array([0, 1, 2, 0, 0, 0.0])) == pytest.approx(0.5 / 0.7)
    assert budget_used(holdout, tau) == 1.0
    assert budget_used(holdout, np.array([1.0, 0, 0, 0, 0, 0])) == 0.5  # only one row looked worth it
    with pytest.raises(ValueError, match="treated and control"):
        UpliftHoldout(np.zeros(3, int), np.ones(3, int), np.zeros(3), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="positive"):
        UpliftHoldout(np.zeros(2, int), np.array([0, 1]), np.zeros(2), np.array([1.0, 0.0]), 1.0)


def test_qini_and_auuc_by_hand() -> None:
    # Four rows: the treated converter and the control non-converter first is the perfect order.
    y, t = np.array([1, 0, 0, 1]), np.array([1, 0, 1, 0])
    holdout = UpliftHoldout(y, t, np.zeros(4), np.ones(4), 1.0)
    best, worst = np.array([4, 3, 2, 1.0]), np.array([1, 2, 3, 4.0])
    # Qini gains per row at k = 1..4: (Y_t - Y_c N_t / N_c) / n = 1/4, 1/4, 1/4, 0; random: 0.
    # Trapezoids over x = 0, 1/4, ..., 1: (0 + 1/4 + 1/4 + 1/4 + 1/4 + 1/4 + 1/4 + 0) / 8 = 3/16.
    assert qini(holdout, best) == pytest.approx(3 / 16)
    # Worst order: gains 0 (one control converter, no treated yet), -1/4, -1/8, 0: area -3/32.
    assert qini(holdout, worst) == pytest.approx(-3 / 32)
    # Uplift curve (rate_t - rate_c) k / n at k = 1..4: 0 (no control yet), 2/4, 3/4 * 1/2, 0.
    assert auuc(holdout, best) == pytest.approx((0 + 0 + 0 + 0.5 + 0.5 + 0.375 + 0.375 + 0) / 8)
    assert auuc(holdout, np.zeros(4)) == 0.0  # one tie group: the whole population, effect 0


def test_qini_and_auuc_do_not_depend_on_the_order_of_ties() -> None:
    """Rows listed in any order (so tied rows rank in any order) give the same areas."""
    rng = np.random.default_rng(0)
    y, t = rng.integers(0, 2, 6), np.array([1, 0, 1, 0, 1, 0])
    score = np.array([0.5, 0.5, 0.5, 0.2, 0.2, 0.9])
    areas = set()
    for order in permutations(range(6)):
        idx = list(order)
        shuffled = UpliftHoldout(y[idx], t[idx], np.zeros(6), np.ones(6), 1.0)
        areas.add((round(qini(shuffled, score[idx]), 12), round(auuc(shuffled, score[idx]), 12)))
    assert len(areas) == 1, areas


def test_t_learner_beats_the_linear_baseline_and_nears_the_oracle(world: dict[str, pd.DataFrame]) -> None:
    train, test = _split(_joined(world))
    fit = {
        name: TLearner(spec.family, INPUTS, spec.params, 7).fit(
            model_frame(INPUTS, train), train["converted"].to_numpy(), train["treated"].to_numpy()
        )
        for name, spec in (("model", SPEC.model), ("baseline", SPEC.baseline))
    }
    x = model_frame(INPUTS, test)
    scores = {name: m.predict_score(x) for name, m in fit.items()}
    scores["oracle"] = test["true_tau"].to_numpy()
    holdout = _holdout(test)
    report = uplift_report(SPEC.metrics, holdout, scores, info={"rows": "holdout"})
    share = {s: report["metrics"][s]["incremental_share"] for s in scores}
    assert share["oracle"] == 1.0
    assert share["model"] > share["baseline"] + 0.1, share
    assert share["model"] > 0.8, share
    assert incremental_share(holdout, np.random.default_rng(1).random(len(test))) < share["baseline"]
    assert report["passed"], report["gates"]
    # The observed-outcome metrics agree on the order of model and a random ranking.
    assert report["metrics"]["model"]["qini"] > qini(holdout, np.random.default_rng(2).random(len(test)))


def test_one_onnx_graph_gives_tau_with_parity(world: dict[str, pd.DataFrame]) -> None:
    frame = _joined(world).iloc[:4000]
    x = model_frame(INPUTS, frame)
    model = TLearner("lightgbm", INPUTS, {"n_estimators": 40}, 0).fit(
        x, frame["converted"].to_numpy(), frame["treated"].to_numpy()
    )
    graph = uplift_to_onnx(model, INPUTS, metadata={"problem": "coupon_budget"}, name="coupon_budget")
    assert [o.name for o in graph.graph.output] == [UPLIFT_OUTPUT]
    assert [i.name for i in graph.graph.input] == [i.name for i in INPUTS]
    onnx.checker.check_model(graph)
    report = parity_report(graph, model, INPUTS, x, tolerance=1e-5, output=UPLIFT_OUTPUT)
    assert report["passed"], report
    tau = onnx_scores(session(graph), onnx_feeds(INPUTS, x), UPLIFT_OUTPUT)
    control, treated = model.arm_probabilities(x)
    assert np.allclose(tau, treated - control, atol=1e-5)
    with pytest.raises(TrainingError, match="not fitted"):
        TLearner("lightgbm", INPUTS).predict_score(x)
    assert (tau < 0).any()
    assert (tau > 0).any()


def test_spec_requires_the_experiment_and_keeps_it_out_of_the_inputs() -> None:
    raw = yaml.safe_load((PROBLEMS / "coupon_budget" / "problem.yml").read_text())["problem"]
    without = {k: v for k, v in raw.items() if k != "uplift"}
    with pytest.raises(SpecError, match="uplift"):
        spec_from_mapping(without)
    leaky = {**raw, "serving": {**raw["serving"], "context": {"treated": {"dtype": "int64"}}}}
    with pytest.raises(SpecError, match=r"uplift\.treatment"):
        spec_from_mapping(leaky)
    binary = {**raw, "task": "binary_classification"}
    with pytest.raises(SpecError, match="only a task uplift problem"):
        spec_from_mapping(binary)
    assert served_outputs(SPEC) == (UPLIFT_OUTPUT,)
    models = api_models(SPEC, max_batch=8)
    assert set(models.request.model_fields) >= {"user_id"}
    assert "treated" not in models.request.model_fields


def test_simulated_traffic_names_known_users_and_new_ones() -> None:
    requests, p0 = coupon_budget.simulate(SPEC, SMALL, 50, "none", seed=1)
    assert all(1 <= r["user_id"] <= SMALL["n_users"] for r in requests)
    assert ((p0 > 0) & (p0 < 1)).all()
    fresh, _ = coupon_budget.simulate(SPEC, SMALL, 5, "new_entities", seed=1)
    assert all(r["user_id"] > SMALL["n_users"] for r in fresh)
    with pytest.raises(ValueError, match="scenario"):
        coupon_budget.simulate(SPEC, SMALL, 5, "concept_drift", seed=1)


def test_monitoring_gives_no_canary_verdict_and_rates_per_variant(tmp_path: Path) -> None:
    from mlsd.pipelines import monitoring

    rollout = tmp_path / "rollout.yaml"
    rollout.write_text("canary: {tag: 'coupon_budget:v2', percent: 10}\n")
    empty = pd.DataFrame()
    verdict = monitoring.canary_verdict(
        SPEC.model_dump(), {}, {}, {"rollout_file": str(rollout)}, {}, empty, empty
    )
    assert verdict["decision"] == "keep_collecting"
    assert "no automatic verdict for an uplift model" in verdict["reasons"][0]
    # The design document and the monitoring agree on which tasks get no verdict.
    assert set(NO_AUTOMATIC_VERDICT) == set(NON_PROBABILITY_TASKS)
    assert not SPEC.scores_are_probabilities
    joined = pd.DataFrame(
        {"variant": ["stable"] * 4, "score": [0.1, -0.05, 0.2, 0.0], "label": [1, 0, 0, np.nan]}
    )
    quality = monitoring.QUALITY["uplift"](joined, min_labelled=1)
    numbers = quality["stable"][1]
    assert numbers["observed_rate"] == pytest.approx(1 / 3)
    assert numbers["mean_score"] == pytest.approx(0.25 / 3)  # over the labelled requests
    assert numbers["labelled"] == 3


@pytest.fixture(scope="module")
def coupon_project() -> Iterator[Path]:
    params = "generator.n_users=4000,generator.users_per_day=1500,training.tune.num_samples=1"
    yield from catalog_project("coupon_budget", params, gate=0.3)


@pytest.mark.slow
def test_kedro_run_registers_an_uplift_model_then_scores_a_campaign(coupon_project: Path) -> None:
    reports = coupon_project / "data" / "08_reporting"
    evaluation = json.loads((reports / "evaluation.json").read_text())
    assert evaluation["passed"], evaluation["gates"]
    share = {s: evaluation["metrics"][s]["incremental_share"] for s in ("model", "baseline", "oracle")}
    assert share["oracle"] == 1.0
    assert share["model"] > share["baseline"], share
    parity = json.loads((reports / "parity.json").read_text())
    assert parity["passed"]
    assert parity["max_abs_diff"] < 1e-5
    registered = json.loads((reports / "registered_model.json").read_text())
    assert registered["stable"] == registered["tag"]

    result = kedro_run(coupon_project, "--pipelines", "batch_scoring")
    assert result.returncode == 0, result.output[-4000:]
    scores = pd.read_parquet(coupon_project / "data" / "07_model_output" / "batch_scores.parquet")
    training = pd.read_parquet(coupon_project / "data" / "05_model_input" / "training_set.parquet")
    assert (scores["user_id"].to_numpy() == training["user_id"].to_numpy()).all()  # input order
    report = json.loads((reports / "batch_scoring.json").read_text())
    assert report["tag"] == registered["tag"]
    assert report["rows"] == len(training)
    allocation = report["allocation"]
    assert allocation["spent"] <= allocation["budget"] + 1e-6
    assert allocation["spent"] > 0.95 * allocation["budget"]
    assert scores.loc[scores["treat"], "score"].min() > 0
