"""ecommerce_rec, the two-stage retrieval archetype: generator truth, the spec's retrieval block,
first-stage metrics, item-item CF, the ranker over ALS candidates against the oracle, one ONNX
graph for both stages with parity, and (slow) `kedro run` -> gates -> registered graph -> served list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from mlsd.evaluation.retrieval import ndcg_at_k, recall_at_k, retrieval_report
from mlsd.export import retrieval_feeds, retrieval_parity, session, two_stage_to_onnx
from mlsd.problems import ecommerce_rec
from mlsd.spec import MetricSpec, ModelInput, load_spec
from mlsd.training import (
    Interactions,
    StageColumns,
    TwoStageModel,
    build_recommender,
    feature_tables,
    get_family,
    ranker_training_rows,
)
from mlsd.training.two_stage import GRID
from tests.conftest import PROBLEMS, catalog_project, served_copy, short_tmp_dir
from tests.server import post, serving

SPEC = load_spec(PROBLEMS / "ecommerce_rec" / "problem.yml")
SMALL = {"n_users": 800, "n_items": 600, "days": 14, "end": "2026-01-15T00:00:00"}
COLUMNS = StageColumns("user_id", "item_id", "views", "buys", ("price",))
RANKER = {"n_estimators": 80, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 50}


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    raw = ecommerce_rec.generate(SPEC, SMALL)
    return {**raw, "engagements": ecommerce_rec.build_events(SPEC, raw)}


def _spans(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    end = events["ts"].max().ceil("D")
    holdout, valid = end - pd.Timedelta(days=2), end - pd.Timedelta(days=4)
    ts = events["ts"]
    return events[ts < valid], events[(ts >= valid) & (ts < holdout)], events[ts >= holdout]


def _bought(rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    bought = rows[rows["buys"] > 0].groupby("user_id")["item_id"].unique()
    return bought.index.to_numpy(), [np.asarray(v) for v in bought]


@pytest.fixture(scope="module")
def fitted(world: dict[str, pd.DataFrame]) -> dict[str, object]:
    """The two-stage model as the pipeline fits it, the item-item baseline and the holdout."""
    train, valid, holdout = _spans(world["engagements"])
    als = {"factors": 16, "regularization": 0.1, "alpha": 2.0}
    early = build_recommender("implicit_mf", als, 0).fit(
        Interactions.from_frame(train, "user_id", "item_id", "views")
    )
    x, y = ranker_training_rows(early, feature_tables(early, train, COLUMNS), COLUMNS, 60, valid)
    inputs = [ModelInput(name=n, dtype="float32") for n in COLUMNS.feature_names()]
    ranker = get_family("lightgbm").build(inputs, RANKER, 0, 1).fit(x, y)
    rows = pd.concat([train, valid])
    data = Interactions.from_frame(rows, "user_id", "item_id", "views")
    retriever = build_recommender("implicit_mf", als, 0).fit(data)
    model = TwoStageModel(retriever, feature_tables(retriever, rows, COLUMNS), ranker, COLUMNS, 60)
    baseline = build_recommender("item_knn", {}, 0).fit(data)
    return {"model": model, "baseline": baseline, "data": data, "holdout": holdout, "labels": y}


def test_truth_is_stored_recomputable_and_purchases_are_views(world: dict[str, pd.DataFrame]) -> None:
    events = world["engagements"]
    assert set(events.columns) == set(SPEC.tables["engagements"].columns)
    assert (events["buys"] <= events["carts"]).all()
    assert (events["carts"] <= events["views"]).all()
    some = events.sample(300, random_state=0)
    again = ecommerce_rec.true_rates(SPEC, SMALL, some["user_id"].to_numpy(), some["item_id"].to_numpy())
    assert np.allclose(np.diag(again), some["true_buy_rate"].to_numpy())
    # The truth drives the purchases: pairs with higher true rates are bought more per view.
    by_rate = pd.qcut(events["true_buy_rate"], 4, labels=False)
    assert events.groupby(by_rate)["buys"].mean().is_monotonic_increasing
    assert 0.04 < events["buys"].sum() / events["views"].sum() < 0.12
    # Zipf popularity: the top tenth of items take far more than a tenth of the views.
    views = events.groupby("item_id")["views"].sum().sort_values(ascending=False)
    assert views.iloc[: len(views) // 10].sum() > 0.3 * views.sum()
    assert SPEC.label.truth not in SPEC.model_inputs()
    assert np.isnan(ecommerce_rec.true_rates(SPEC, SMALL, np.array([10**9]), np.array([100001]))).all()


def test_price_off_budget_stops_purchases() -> None:
    """The budget is what a ranker reading prices can learn: same views, fewer buys off budget."""
    p = ecommerce_rec.GeneratorParams.model_validate(SMALL)
    shop = ecommerce_rec.ShopWorld.create(p)
    users = np.arange(50)
    p_buy = shop.buy_probability(users)
    gap = np.abs(np.log(shop.items["price"].to_numpy())[None, :] - shop.log_budget[users, None])
    assert p_buy[gap < 0.3].mean() > 3 * p_buy[gap > 1.5].mean()


def test_feature_windows_end_before_the_snapshot(world: dict[str, pd.DataFrame]) -> None:
    events = world["engagements"]
    tables = ecommerce_rec.build_feature_tables(SPEC, world, events, {"window_days": 7})
    users = tables["user_activity"]
    snap = users["event_timestamp"].max()
    row = users[users["event_timestamp"] == snap].set_index("user_id")
    inside = events[(events["ts"] < snap) & (events["ts"] >= snap - pd.Timedelta(days=7))]
    for column in ("views", "buys"):
        expected = inside.groupby("user_id")[column].sum()
        assert (row.loc[expected.index, f"user_{column}_7d"] == expected).all()
    assert tables["item_sales"]["item_buys_7d"].sum() > 0


def test_spec_retrieval_block_is_checked() -> None:
    assert SPEC.retrieval is not None
    assert SPEC.retrieval.candidates == 100
    assert [m.stage for m in SPEC.metrics] == ["candidates", None, None]
    bad = SPEC.model_dump()
    bad["metrics"] = bad["metrics"][1:]
    with pytest.raises(ValueError, match=r"metrics\[0\].*stage: candidates"):
        type(SPEC).model_validate(bad)
    bad = SPEC.model_dump()
    bad["retrieval"]["item_columns"] = ["category"]
    with pytest.raises(ValueError, match="'category' must be a numeric column of engagements"):
        type(SPEC).model_validate(bad)
    bad = SPEC.model_dump()
    bad["retrieval"]["candidates"] = 5
    with pytest.raises(ValueError, match=r"exceeds retrieval\.candidates"):
        type(SPEC).model_validate(bad)
    bad = SPEC.model_dump()
    del bad["retrieval"]
    with pytest.raises(ValueError, match="needs a two-stage problem"):
        type(SPEC).model_validate(bad)


def test_report_reads_each_stage_from_its_own_lists() -> None:
    metrics = [
        MetricSpec(name="recall_at_k", higher_is_better=True, params={"k": 3}, stage="candidates"),
        MetricSpec(name="ndcg_at_k", higher_is_better=True, params={"k": 2}),
    ]
    relevant = [np.array([3]), np.array([7])]
    candidates = {s: np.array([[1, 2, 3], [7, 8, 9]]) for s in ("model", "baseline", "oracle")}
    ranked = {s: np.array([[3, 1], [8, 7]]) for s in ("model", "baseline", "oracle")}
    report = retrieval_report(metrics, relevant, ranked, holdout={}, candidates=candidates)
    assert report["metrics"]["model"]["recall_at_k"] == pytest.approx(1.0)  # both found in stage 1
    assert report["metrics"]["model"]["ndcg_at_k"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    with pytest.raises(ValueError, match="pass its lists as candidates"):
        retrieval_report(metrics, relevant, ranked, holdout={})


def test_item_knn_scores_by_hand() -> None:
    data = Interactions(np.array([1, 1, 2, 2, 3]), np.array([10, 20, 20, 30, 30]), np.array([1, 1, 1, 1, 1]))
    knn = build_recommender("item_knn", {}, 0).fit(data)
    w = np.log(2.0)
    # Item 20 is shared by users 1 and 2; cos(10, 20) = w^2 / (w * sqrt(2) w) = 1/sqrt(2).
    scores = knn.scores(np.array([1]))[0]
    assert scores[0] == pytest.approx(w * (1 + 1 / np.sqrt(2)), rel=1e-5)  # item 10
    assert scores[2] == pytest.approx(w * 0.5, rel=1e-5)  # item 30 via 20: cos = 1/2
    assert knn.recommend(np.array([3]), 1)[0][0, 0] == 30


def test_ranker_lifts_the_list_above_its_candidates_and_the_baseline(fitted: dict[str, object]) -> None:
    model, baseline = fitted["model"], fitted["baseline"]
    assert isinstance(model, TwoStageModel)
    users, relevant = _bought(fitted["holdout"])  # type: ignore[arg-type]
    items = fitted["data"].item_ids  # type: ignore[attr-defined]
    rates = ecommerce_rec.true_rates(SPEC, SMALL, users, items)
    oracle = items[np.argsort(-rates, axis=1)[:, :60]]
    ndcg = {
        "two_stage": ndcg_at_k(model.recommend(users, 10)[0], relevant, 10),
        "stage_1": ndcg_at_k(model.retriever.recommend(users, 10)[0], relevant, 10),
        "item_knn": ndcg_at_k(baseline.recommend(users, 10)[0], relevant, 10),  # type: ignore[attr-defined]
        "oracle": ndcg_at_k(oracle, relevant, 10),
    }
    assert ndcg["two_stage"] > ndcg["stage_1"] + 0.01, ndcg
    assert ndcg["two_stage"] > ndcg["item_knn"], ndcg
    assert ndcg["oracle"] > ndcg["two_stage"], ndcg
    recall = recall_at_k(model.candidates(users)[0], relevant, 60)
    assert recall_at_k(oracle, relevant, 60) - recall < 0.2, recall
    # The served list is a re-ordering of the candidates.
    served, _ = model.recommend(users[:20], 10)
    cands, _ = model.candidates(users[:20])
    assert all(set(s) <= set(c) for s, c in zip(served, cands, strict=True))
    assert 0 < fitted["labels"].mean() < 0.1  # type: ignore[attr-defined]


def test_one_graph_serves_both_stages_with_parity(fitted: dict[str, object]) -> None:
    model = fitted["model"]
    assert isinstance(model, TwoStageModel)
    graph = two_stage_to_onnx(model, 10)
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == ["items", "scores"]
    assert [i.name for i in graph.graph.input] == ["user_id"]
    unknown = np.array([10**9, -3])
    ids = np.concatenate([fitted["data"].user_ids, unknown])  # type: ignore[attr-defined]
    report = retrieval_parity(graph.SerializeToString(), model, ids, 10, tolerance=1e-5)
    assert report["passed"], report
    assert report["item_mismatches"] == 0
    items, scores = session(graph).run(["items", "scores"], retrieval_feeds(unknown))
    assert items.shape == (2, 10)
    assert (items[0] == items[1]).all()
    assert ((scores > 0) & (scores < 1)).all()  # the ranker's P(buy)
    features = model.tables.users * GRID
    assert np.array_equal(features, np.round(features))  # the grid the parity relies on
    # A graph whose ranker differs from the native model's fails parity with the numbers.
    other = get_family("lightgbm").build(
        [ModelInput(name=n, dtype="float32") for n in COLUMNS.feature_names()],
        {**RANKER, "n_estimators": 5},
        0,
        1,
    )
    x, y = ranker_training_rows(model.retriever, model.tables, COLUMNS, 60, fitted["holdout"])  # type: ignore[arg-type]
    swapped = TwoStageModel(model.retriever, model.tables, other.fit(x, y), COLUMNS, 60)
    bad = retrieval_parity(two_stage_to_onnx(swapped, 10).SerializeToString(), model, ids, 10, tolerance=1e-5)
    assert not bad["passed"]


def test_simulate_names_known_users_and_new_ones() -> None:
    requests, true_p = ecommerce_rec.simulate(SPEC, SMALL, 50, "none", seed=1)
    assert all(1 <= r["user_id"] <= SMALL["n_users"] for r in requests)
    assert ((true_p > 0) & (true_p < 1)).all()
    fresh, _ = ecommerce_rec.simulate(SPEC, SMALL, 5, "new_entities", seed=1)
    assert all(r["user_id"] > SMALL["n_users"] for r in fresh)
    with pytest.raises(ValueError, match="scenario"):
        ecommerce_rec.simulate(SPEC, SMALL, 5, "concept_drift", seed=1)


# --- the whole loop on small data ------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_project() -> Iterator[Path]:
    smoke = yaml.safe_load((PROBLEMS / "ecommerce_rec" / "smoke.yml").read_text())
    yield from catalog_project("ecommerce_rec", smoke["params"], smoke["gate"])


@pytest.mark.slow
def test_kedro_run_gates_both_stages_and_serves_the_reranked_list(shop_project: Path) -> None:
    reports = shop_project / "data" / "08_reporting"
    evaluation = json.loads((reports / "evaluation.json").read_text())
    assert evaluation["passed"], evaluation["gates"]
    metrics = evaluation["metrics"]
    assert metrics["model"]["ndcg_at_k"] > metrics["baseline"]["ndcg_at_k"], metrics
    assert {g["metric"] for g in evaluation["gates"]} == {"recall_at_k", "ndcg_at_k"}
    parity = json.loads((reports / "parity.json").read_text())
    assert parity["passed"]
    assert parity["item_mismatches"] == 0
    training = json.loads((reports / "training.json").read_text())
    assert training["ranker"]["features"] == COLUMNS.feature_names()
    registered = json.loads((reports / "registered_model.json").read_text())
    assert registered["stable"] == registered["tag"]
    items = set(pd.read_parquet(shop_project / "data" / "01_raw" / "items.parquet")["item_id"])
    project = served_copy(shop_project, short_tmp_dir() / "p")
    with serving(project) as srv:
        status, body = post(f"{srv.url}/predict", {"user_id": 5})
        assert status == 200, body
        assert len(body["items"]) == 10
        assert set(body["items"]) <= items
        assert body["scores"] == sorted(body["scores"], reverse=True)
        assert all(0 < s < 1 for s in body["scores"])
        status, cold = post(f"{srv.url}/predict", {"user_id": 10**9, "k": 3})
        assert status == 200
        assert len(cold["items"]) == 3
