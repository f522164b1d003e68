"""The bad_ads problem: its generator's truth, the adversary's obfuscation, point-in-time advertiser
features, the text-only baseline against the oracle with ONNX parity, and its requests.

The whole pipeline on bad_ads (Feast features, Ray, gates, serving, monitoring) runs in
tests/test_template.py, on a generated project with small data.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from mlsd.evaluation.metrics import pr_auc, precision_at_recall
from mlsd.export import parity_report, to_onnx
from mlsd.problems import bad_ads
from mlsd.serving import api_models
from mlsd.spec import TOKEN_PATTERN, ProblemSpec, load_spec
from mlsd.training import model_frame, time_split
from mlsd.training.families import get_family
from tests.conftest import PROBLEMS

FOLDER = PROBLEMS / "bad_ads"
SMALL: dict[str, Any] = {"n_ads": 30_000, "end": "2026-01-22T00:00:00"}
HIDDEN = re.compile(r"^(?=.*\d)(?=.*[a-z])[a-z0-9]+$")  # a policy term with digits swapped in


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return load_spec(FOLDER / "problem.yml")


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    generator: dict[str, Any] = yaml.safe_load((FOLDER / "parameters_problem.yml").read_text())["generator"]
    return {**generator, **SMALL}


@pytest.fixture(scope="module")
def world(spec: ProblemSpec, params: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    raw = bad_ads.generate(spec, params)
    return raw, bad_ads.build_events(spec, raw)


def _bad_advertisers(params: dict[str, Any]) -> np.ndarray:
    world = bad_ads.AdWorld.create(bad_ads.GeneratorParams.model_validate(params))
    return np.asarray(world.advertisers["advertiser_id"].to_numpy()[world.bad])


# --- spec ----------------------------------------------------------------------------------------


def test_the_baseline_reads_the_text_and_the_model_adds_the_advertiser(spec: ProblemSpec) -> None:
    text = ["headline", "body", "landing_domain"]
    assert [i.name for i in spec.inputs_of(spec.baseline)] == text
    assert all(i.text is not None for i in spec.inputs_of(spec.baseline))
    assert [i.name for i in spec.model_input_schema()] == [
        "prior_violations", "account_age_days", "advertiser_ads_14d", "advertiser_reject_rate_14d", *text,
    ]  # fmt: skip
    assert spec.text_inputs() == text


# --- generator -----------------------------------------------------------------------------------


def test_the_generator_is_seeded_and_its_truth_sets_the_bad_rate(spec: ProblemSpec, params, world) -> None:
    raw, events = world
    pd.testing.assert_frame_equal(bad_ads.generate(spec, params)["ads"], raw["ads"])
    assert abs(events["true_p"].mean() - 0.03) < 1e-4  # the calibrated intercept
    assert 0.02 < events["is_bad"].mean() < 0.04
    # The verdict follows the truth, and bad advertisers' ads are far likelier to be bad.
    assert events.loc[events["is_bad"] == 1, "true_p"].mean() > 8 * events["true_p"].median()
    bad = events["advertiser_id"].isin(_bad_advertisers(params))
    assert events.loc[bad, "is_bad"].mean() > 10 * events.loc[~bad, "is_bad"].mean()


def test_reviews_come_after_their_ad_within_the_delay(world) -> None:
    raw, events = world
    delay = events["review_ts"] - events["ts"]
    assert (delay >= pd.Timedelta(minutes=10)).all()
    assert (delay <= pd.Timedelta(days=2)).all()
    assert (events["is_bad"] == (raw["reviews"]["verdict"] == "reject").to_numpy()).all()


def test_policy_terms_show_scams_only_bad_advertisers_hide_them_and_violate_beyond_them(
    params, world
) -> None:
    _, events = world
    words = (events["headline"] + " " + events["body"]).str.split()
    plain = words.map(lambda w: sum(t in bad_ads.POLICY for t in w))
    hidden = words.map(lambda w: sum(bool(HIDDEN.match(t)) for t in w))
    high = events["true_p"] > events["true_p"].quantile(0.9)
    assert plain[high].mean() > 4 * plain[~high].mean()
    bad = events["advertiser_id"].isin(_bad_advertisers(params))
    assert hidden[~bad].sum() == 0
    assert hidden[bad].sum() > 0.5 * plain[bad].sum()  # obfuscation 0.6 of their policy terms
    # Nearly every hidden spelling is new, so a vocabulary with min_df 2 cannot learn them.
    spellings = pd.Series([t for w in words[bad] for t in w if HIDDEN.match(t)]).value_counts()
    assert (spellings == 1).mean() > 0.8
    assert all(re.fullmatch(f"({TOKEN_PATTERN}| )*", t) for t in events["body"].head(200))
    # What text alone cannot see: bad advertisers' ads with no policy term still violate often.
    clean = (plain == 0) & (hidden == 0)
    assert events.loc[clean & bad, "is_bad"].mean() > 5 * events.loc[clean & ~bad, "is_bad"].mean()


# --- features ------------------------------------------------------------------------------------


def test_advertiser_features_only_know_what_was_known_at_their_snapshot(spec, world) -> None:
    raw, events = world
    tables = bad_ads.build_feature_tables(spec, raw, events, {})
    advertiser = events["advertiser_id"].value_counts().index[0]
    mine = events[events["advertiser_id"] == advertiser]
    for row in tables["advertiser_activity"].loc[lambda t: t["advertiser_id"] == advertiser].itertuples():
        start = row.event_timestamp - pd.Timedelta(days=14)
        submitted = mine["ts"].between(start, row.event_timestamp, inclusive="left")
        rejected = (mine["is_bad"] == 1) & mine["review_ts"].between(
            start, row.event_timestamp, inclusive="left"
        )
        assert row.advertiser_ads_14d == submitted.sum()
        expected = (rejected.sum() + 0.03 * 10) / (submitted.sum() + 10)
        assert row.advertiser_reject_rate_14d == pytest.approx(expected, rel=1e-6)
    signup = raw["advertisers"].set_index("advertiser_id").loc[advertiser, "signup_ts"]
    for row in tables["advertiser_age"].loc[lambda t: t["advertiser_id"] == advertiser].itertuples():
        assert row.account_age_days == (row.event_timestamp - signup).days
        assert row.event_timestamp >= signup


# --- metrics, baseline vs oracle, parity ---------------------------------------------------------


def test_pr_auc_and_precision_at_recall_by_hand() -> None:
    y = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 0])
    s = np.linspace(1, 0.1, 10)
    # Positives at ranks 1, 4, 6: average precision = (1 + 2/4 + 3/6) / 3.
    assert pr_auc(y, s) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert precision_at_recall(y, s, recall=0.6) == pytest.approx(0.5)  # 2 of the first 4
    assert precision_at_recall(y, s, recall=1.0) == pytest.approx(0.5)  # 3 of the first 6


def test_the_text_baseline_learns_but_stays_below_the_oracle_and_exports_exactly(spec, world) -> None:
    _, events = world
    split = time_split(events, "ts", pd.Timedelta(days=3), pd.Timedelta(days=1))
    inputs = spec.inputs_of(spec.baseline)
    train = pd.concat([split.train, split.valid])
    family = get_family(spec.baseline.family)
    baseline = family.build(inputs, spec.baseline.params, 7, 1).fit(
        model_frame(inputs, train), train["is_bad"]
    )
    holdout = split.holdout
    y, frame = holdout["is_bad"].to_numpy(), model_frame(inputs, holdout)
    score = pr_auc(y, baseline.predict_proba(frame)[:, 1])
    oracle = pr_auc(y, holdout["true_p"].to_numpy())
    assert 3 * y.mean() < score < oracle
    report = parity_report(to_onnx(baseline, inputs), baseline, inputs, frame, tolerance=1e-5)
    assert report["passed"], report
    assert report["max_abs_diff"] < 1e-6


# --- serving -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["none", "covariate_shift", "concept_drift", "new_entities"])
def test_simulated_ads_are_valid_requests(spec: ProblemSpec, params, world, scenario: str) -> None:
    raw, _ = world
    request = api_models(spec, max_batch=10).request
    requests, truth = bad_ads.simulate(spec, params, 300, scenario, seed=1)
    for r in requests:
        request.model_validate(r)
    assert truth.shape == (300,)
    assert ((truth > 0) & (truth < 1)).all()
    known = set(raw["advertisers"]["advertiser_id"])
    ids = {r["advertiser_id"] for r in requests}
    assert (ids <= known) is (scenario != "new_entities")
    assert not (ids & known) or scenario != "new_entities"


def test_concept_drift_hides_more_policy_terms(spec: ProblemSpec, params) -> None:
    def hidden_share(scenario: str) -> float:
        requests, _ = bad_ads.simulate(spec, params, 3000, scenario, seed=2)
        tokens = [t for r in requests for t in r["body"].split()]
        return float(np.mean([bool(HIDDEN.match(t)) for t in tokens]))

    assert hidden_share("concept_drift") > 1.3 * hidden_share("none")


def test_a_text_field_sent_as_a_list_or_a_number_is_refused_by_name(spec: ProblemSpec) -> None:
    request = api_models(spec, max_batch=1).request
    good = {"advertiser_id": 1, "headline": "a", "body": "b", "landing_domain": "c.com"}
    for field, wrong in (("headline", ["a", "b"]), ("body", 3), ("landing_domain", "x" * 254)):
        with pytest.raises(ValidationError) as info:
            request.model_validate({**good, field: wrong})
        assert [e["loc"] for e in info.value.errors()] == [(field,)]
