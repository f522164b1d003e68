"""artist_rec, the retrieval archetype: generator truth, ALS vs popularity, metrics, ONNX graph,
and (slow) the whole loop: `kedro run` -> registered graph -> `bentoml serve` -> monitoring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from mlsd.errors import SpecError
from mlsd.evaluation.retrieval import map_at_k, ndcg_at_k, precision_at_k, recall_at_k
from mlsd.export import retrieval_feeds, retrieval_parity, retrieval_to_onnx, session
from mlsd.problems import artist_rec
from mlsd.serving import api_models
from mlsd.spec import load_spec
from mlsd.training import Interactions, build_recommender
from tests.conftest import PROBLEMS, catalog_project, kedro_run, served_copy, short_tmp_dir
from tests.server import post, serving

SPEC = load_spec(PROBLEMS / "artist_rec" / "problem.yml")
SMALL = {"n_users": 300, "n_artists": 200, "days": 10, "end": "2026-01-15T00:00:00"}


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    raw = artist_rec.generate(SPEC, SMALL)
    return {**raw, "listens": artist_rec.build_events(SPEC, raw)}


def _split(listens: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = listens["ts"].max() - pd.Timedelta(days=2)
    return listens[listens["ts"] < cut], listens[listens["ts"] >= cut]


def _relevant(rows: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    played = rows.groupby("user_id")["artist_id"].unique()
    return played.index.to_numpy(), [np.asarray(v) for v in played]


def test_truth_is_stored_and_recomputable(world: dict[str, pd.DataFrame]) -> None:
    listens = world["listens"]
    assert set(listens.columns) == set(SPEC.tables["listens"].columns)
    again = artist_rec.true_rates(SPEC, SMALL, listens["user_id"].to_numpy(), listens["artist_id"].to_numpy())
    rows = np.arange(len(listens))
    assert np.allclose(again[rows, rows], listens["true_rate"].to_numpy())
    # Heavier true rates are played more: the truth drives the data.
    by_rate = pd.qcut(listens["true_rate"], 4, labels=False)
    assert listens.groupby(by_rate)["play_count"].mean().is_monotonic_increasing
    assert SPEC.label.truth not in SPEC.model_inputs()
    assert np.isnan(artist_rec.true_rates(SPEC, SMALL, np.array([10**9]), np.array([1001]))).all()


def test_feature_windows_end_before_the_snapshot(world: dict[str, pd.DataFrame]) -> None:
    tables = artist_rec.build_feature_tables(SPEC, world, world["listens"], {"window_days": 7})
    users = tables["user_activity"]
    listens = world["listens"]
    snap = users["event_timestamp"].max()
    row = users[(users["event_timestamp"] == snap)].set_index("user_id")
    inside = listens[(listens["ts"] < snap) & (listens["ts"] >= snap - pd.Timedelta(days=7))]
    expected = inside.groupby("user_id")["play_count"].sum()
    assert (row.loc[expected.index, "user_plays_7d"] == expected).all()
    distinct = inside.groupby("user_id")["artist_id"].nunique()
    assert (row.loc[distinct.index, "user_artists_7d"] == distinct).all()
    assert tables["artist_popularity"]["artist_plays_7d"].sum() > 0


def test_als_beats_popularity_and_approaches_the_oracle(world: dict[str, pd.DataFrame]) -> None:
    train, holdout = _split(world["listens"])
    data = Interactions.from_frame(train, "user_id", "artist_id", "play_count")
    users, relevant = _relevant(holdout)
    als = build_recommender("implicit_mf", {"factors": 8, "regularization": 0.5, "alpha": 1.0}, 0).fit(data)
    popular = build_recommender("popularity", {}, 0).fit(data)
    artists = world["artists"]["artist_id"].to_numpy()
    rates = artist_rec.true_rates(SPEC, SMALL, users, artists)
    oracle = artists[np.argsort(-rates, axis=1)[:, :10]]
    scores = {
        name: precision_at_k(ranked, relevant, 10)
        for name, ranked in (
            ("als", als.recommend(users, 10)[0]),
            ("popularity", popular.recommend(users, 10)[0]),
            ("oracle", oracle),
        )
    }
    assert scores["als"] > scores["popularity"] + 0.05, scores
    assert scores["oracle"] - scores["als"] < 0.08, scores
    assert scores["oracle"] >= scores["als"] - 0.01, scores


def test_metrics_by_hand() -> None:
    ranked = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    relevant = [np.array([2, 4, 10]), np.array([5]), np.array([], dtype=int)]  # the third is skipped
    assert precision_at_k(ranked, relevant, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert recall_at_k(ranked, relevant, 4) == pytest.approx((2 / 3 + 1) / 2)
    # AP@4 of user 1: hits at ranks 2 and 4 -> (1/2 + 2/4) / min(3, 4); user 2: 1 / 1.
    assert map_at_k(ranked, relevant, 4) == pytest.approx(((1 / 2 + 2 / 4) / 3 + 1) / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx((dcg / ideal + 1) / 2)
    with pytest.raises(ValueError, match="fewer than k"):
        precision_at_k(ranked, relevant, 5)
    with pytest.raises(ValueError, match="no user has a relevant item"):
        precision_at_k(ranked[2:], relevant[2:], 4)


def test_onnx_graph_matches_the_model_and_serves_unknown_users_the_popular_list(
    world: dict[str, pd.DataFrame],
) -> None:
    data = Interactions.from_frame(world["listens"], "user_id", "artist_id", "play_count")
    model = build_recommender("implicit_mf", {"factors": 8}, 0).fit(data)
    graph = retrieval_to_onnx(model, 10)
    onnx.checker.check_model(graph)
    unknown = np.array([10**9, -3])
    ids = np.concatenate([data.user_ids, unknown])
    report = retrieval_parity(graph.SerializeToString(), model, ids, 10, tolerance=1e-5)
    assert report["passed"], report
    assert report["item_mismatches"] == 0
    items, scores = session(graph).run(["items", "scores"], retrieval_feeds(unknown))
    counts = (
        world["listens"].groupby("artist_id")["play_count"].sum().sort_values(ascending=False, kind="stable")
    )
    assert items.shape == (2, 10)
    assert items.dtype == np.int64
    assert scores.dtype == np.float32
    assert (items == counts.index[:10].to_numpy()).all()  # cold start = most played artists
    known = session(graph).run(["items"], retrieval_feeds(data.user_ids[:50]))[0]
    assert len({tuple(row) for row in known}) > 10  # known users get their own lists
    # A graph ranking other items fails parity with the numbers.
    model.item_factors_[:, :-1] *= -1
    assert not retrieval_parity(graph.SerializeToString(), model, ids, 10, tolerance=1e-5)["passed"]


def test_spec_and_api_are_retrieval_shaped() -> None:
    assert [(i.name, i.dtype) for i in SPEC.model_input_schema()] == [("user_id", "int64")]
    api = api_models(SPEC, max_batch=8)
    assert api.request.model_validate({"user_id": 3, "k": 5}).k == 5  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="less than or equal to 10"):
        api.request.model_validate({"user_id": 3, "k": 11})
    bad = SPEC.model_dump()
    bad["serving"]["top_k"] = None
    with pytest.raises(ValueError, match=r"serving\.top_k"):
        type(SPEC).model_validate(bad)
    with pytest.raises(SpecError, match="not a retrieval family"):
        build_recommender("lightgbm", {}, 0)


def test_simulate_names_known_users_and_new_ones() -> None:
    requests, true_p = artist_rec.simulate(SPEC, SMALL, 50, "none", seed=1)
    assert all(1 <= r["user_id"] <= SMALL["n_users"] for r in requests)
    assert ((true_p > 0) & (true_p < 1)).all()
    fresh, _ = artist_rec.simulate(SPEC, SMALL, 5, "new_entities", seed=1)
    assert all(r["user_id"] > SMALL["n_users"] for r in fresh)
    with pytest.raises(ValueError, match="scenario"):
        artist_rec.simulate(SPEC, SMALL, 5, "concept_drift", seed=1)


# --- the whole loop on small data ------------------------------------------------------------


@pytest.fixture(scope="module")
def artist_project() -> Iterator[Path]:
    yield from catalog_project("artist_rec", "generator.n_users=400,training.tune.num_samples=2", gate=None)


@pytest.mark.slow
def test_kedro_run_registers_a_model_near_the_oracle(artist_project: Path) -> None:
    reports = artist_project / "data" / "08_reporting"
    evaluation = json.loads((reports / "evaluation.json").read_text())
    assert evaluation["passed"], evaluation["gates"]
    metrics = evaluation["metrics"]
    precision = {s: metrics[s]["precision_at_k"] for s in ("model", "baseline", "oracle")}
    assert precision["model"] > precision["baseline"], precision
    assert precision["oracle"] - precision["model"] <= 0.08, precision
    assert set(metrics["model"]) == {"precision_at_k", "recall_at_k", "map_at_k", "ndcg_at_k"}
    parity = json.loads((reports / "parity.json").read_text())
    assert parity["passed"]
    assert parity["item_mismatches"] == 0
    registered = json.loads((reports / "registered_model.json").read_text())
    assert registered["tag"].startswith("artist_rec:")
    assert registered["stable"] == registered["tag"]
    assert "precision_at_k" in (reports / "evaluation.md").read_text()


@pytest.mark.slow
def test_serve_ranked_lists_then_monitor(artist_project: Path) -> None:
    from mlsd.monitoring.traffic import feedback_records, send, write_feedback

    project = served_copy(artist_project, short_tmp_dir() / "p")
    artists = set(pd.read_parquet(project / "data" / "01_raw" / "artists.parquet")["artist_id"])
    params = {"n_users": 400}
    requests, true_p = artist_rec.simulate(SPEC, params, 240, "none", seed=3)
    for i, request in enumerate(requests):
        request["request_id"] = f"sim-{i}"
    with serving(project) as srv:
        status, body = post(f"{srv.url}/predict", {"user_id": 5})
        assert status == 200, body
        assert len(body["items"]) == 10
        assert set(body["items"]) <= artists
        assert body["scores"] == sorted(body["scores"], reverse=True)
        assert body["variant"] == "stable"
        status, cold = post(f"{srv.url}/predict", {"user_id": 10**9, "k": 3})
        assert status == 200
        assert len(cold["items"]) == 3
        assert cold["missing_features"] == ["user_plays_7d", "user_artists_7d"]
        status, other = post(f"{srv.url}/predict", {"user_id": 10**9 + 1})
        assert other["items"][:3] == cold["items"]  # every unknown user gets the same popular list
        assert body["items"] != other["items"]
        sent = send(srv.url, requests, rate=500, concurrency=4, progress=None)
    assert len(sent.answered) == len(requests), sent.errors[:3]
    feedback = project / "data" / "07_model_output" / "feedback" / "feedback.jsonl"
    write_feedback(feedback, feedback_records(requests, true_p, sent.answered, seed=3, delay_s=1))
    logged = [
        json.loads(line)
        for f in (project / "data/07_model_output/predictions").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert all(len(r["items"]) == len(r["scores"]) for r in logged)
    result = kedro_run(project, "--pipelines", "monitoring")
    assert result.returncode == 0, result.output[-4000:]
    drift = json.loads((project / "data" / "08_reporting" / "drift.json").read_text())
    assert set(drift["columns"]) == {"user_plays_7d", "user_artists_7d"}
    stable = drift["quality"]["stable"]
    assert stable["labelled"] == len(requests)
    assert 0 < stable["hit_rate"] < 1


def test_train_nodes_dispatch_on_the_task(world: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    from mlsd.pipelines import monitoring, training

    data = Interactions.from_frame(world["listens"], "user_id", "artist_id", "play_count")
    model = build_recommender("popularity", {}, 0).fit(data)
    graph = onnx.load_from_string(training.export_model(SPEC.model_dump(), model))
    assert [o.name for o in graph.graph.output] == ["items", "scores"]
    assert [i.name for i in graph.graph.input] == ["user_id"]
    # A running canary gets no automatic verdict: the paired analysis compares probabilities.
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text("canary: {tag: 'artist_rec:v2', percent: 10}\n")
    empty = pd.DataFrame()
    serving = {"rollout_file": str(rollout)}
    verdict = monitoring.canary_verdict(SPEC.model_dump(), {}, {}, serving, {}, empty, empty)
    assert verdict["decision"] == "keep_collecting"
    assert "hit_rate" in verdict["reasons"][0]
