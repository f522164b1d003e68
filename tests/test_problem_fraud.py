"""The fraud problem: its generator's truth, point-in-time features, imbalance metrics and requests.

The whole pipeline on fraud runs in tests/test_template.py (a generated project, small data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsd.evaluation.metrics import precision_at_recall, recall_at_precision
from mlsd.problems import fraud
from mlsd.serving.schema import api_models
from mlsd.spec import ProblemSpec, load_spec
from tests.conftest import PROBLEMS

SMALL = {"n_transactions": 20_000, "end": "2026-01-15T00:00:00"}


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return load_spec(PROBLEMS / "fraud" / "problem.yml")


@pytest.fixture(scope="module")
def world(spec: ProblemSpec) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict[str, pd.DataFrame]]:
    raw = fraud.generate(spec, SMALL)
    events = fraud.build_events(spec, raw)
    return raw, events, fraud.build_feature_tables(spec, raw, events, {})


def test_the_generator_is_seeded_and_its_truth_sets_the_fraud_rate(spec: ProblemSpec, world) -> None:
    raw, events, _ = world
    again = fraud.generate(spec, SMALL)["transactions"]
    pd.testing.assert_frame_equal(raw["transactions"], again)
    assert events["true_p"].between(0, 1).all()
    assert 0.002 < events["is_fraud"].mean() < 0.01
    assert abs(events["true_p"].mean() - 0.005) < 1e-4  # the calibrated intercept
    # The label follows the truth: frauds were far likelier by the generator's own account.
    assert events.loc[events["is_fraud"] == 1, "true_p"].mean() > 20 * events["true_p"].median()


def test_chargebacks_come_after_their_payment_within_the_window(world) -> None:
    raw, events, _ = world
    joined = raw["chargebacks"].merge(raw["transactions"][["txn_id", "ts"]], on="txn_id")
    delay = joined["chargeback_ts"] - joined["ts"]
    assert (delay > pd.Timedelta(0)).all()
    assert (delay <= pd.Timedelta(days=10)).all()
    assert events["is_fraud"].sum() == len(raw["chargebacks"])


def test_ring_devices_are_shared_and_own_devices_are_not(world) -> None:
    _, events, tables = world
    sharing = tables["device_sharing"].groupby("device_id")["device_cards_7d"].max()
    cards_per_device = events.groupby("device_id")["card_id"].nunique()
    own = cards_per_device.index[cards_per_device == 1]
    assert sharing.reindex(own).dropna().max() == 1
    shared = cards_per_device.index[cards_per_device > 3]
    assert len(shared) > 0, "fraud rings should use each of their devices for several cards"
    assert events.loc[events["device_id"].isin(shared), "is_fraud"].mean() > 0.2


def test_card_features_only_count_payments_before_their_snapshot(world) -> None:
    _, events, tables = world
    card = events["card_id"].value_counts().index[0]
    mine = events.loc[events["card_id"] == card]
    for row in tables["card_amounts"].loc[lambda t: t["card_id"] == card].itertuples():
        before = mine.loc[mine["ts"] < row.event_timestamp, "amount_cents"]
        assert row.card_txns_total == len(before)
        assert row.card_mean_cents == round(before.mean())
    for row in tables["card_velocity"].loc[lambda t: t["card_id"] == card].itertuples():
        start = row.event_timestamp - pd.Timedelta(hours=1)
        assert row.card_txns_1h == mine["ts"].between(start, row.event_timestamp, inclusive="left").sum()


def test_imbalance_metrics_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # Thresholds by score: 0.9 -> P 1, R 1/3; 0.7 -> P 2/3, R 2/3; 0.4 -> P 1/2, R 1.
    assert recall_at_precision(y, s, precision=0.9) == pytest.approx(1 / 3)
    assert recall_at_precision(y, s, precision=0.6) == pytest.approx(2 / 3)
    assert precision_at_recall(y, s, recall=0.6) == pytest.approx(2 / 3)
    assert precision_at_recall(y, s, recall=1.0) == pytest.approx(0.5)
    assert recall_at_precision(y, 1 - s, precision=0.99) == 0.0  # no threshold is that precise
    with pytest.raises(ValueError, match="precision must be in"):
        recall_at_precision(y, s, precision=1.5)


def test_simulated_payments_are_valid_requests_and_new_cards_are_new(spec: ProblemSpec, world) -> None:
    raw, _, _ = world
    models = api_models(spec, max_batch=10)
    requests, truth = fraud.simulate(spec, SMALL, 200, "none", seed=1)
    for request in requests:
        models.request.model_validate(request)
    assert truth.shape == (200,)
    known = set(raw["cards"]["card_id"])
    assert {r["card_id"] for r in requests} <= known
    fresh, _ = fraud.simulate(spec, SMALL, 50, "new_entities", seed=1)
    assert not ({r["card_id"] for r in fresh} & known)
    with pytest.raises(ValueError, match="scenario"):
        fraud.simulate(spec, SMALL, 5, "meteor", seed=1)
