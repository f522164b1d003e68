"""The text retrieval archetype on planted data: TF-IDF retrieval, the pointwise ranker, the one
ONNX graph and its parity, the retrieval MRR, the spec's text_retrieval block and node dispatch."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.errors import SpecError, TrainingError
from mlsd.evaluation.retrieval import RETRIEVAL_METRICS, mrr_at_k
from mlsd.export import session, text_feeds, text_retrieval_parity, text_retrieval_to_onnx
from mlsd.spec import spec_from_mapping
from mlsd.training import Documents, Judgments, TextRetriever, build_text_retriever
from tests.conftest import PROBLEMS

TEXTS = [
    "red apple pie recipe",
    "green apple juice",
    "fast red car review",
    "car engine repair guide",
    "apple orchard tour",
    "pie crust tips",
]


def _documents(features: np.ndarray | None = None) -> Documents:
    ids = np.arange(10, 10 + len(TEXTS))
    return Documents(ids, np.array(TEXTS), np.zeros((len(TEXTS), 0)) if features is None else features)


def test_tfidf_retrieval_ranks_by_cosine_like_scikit_learn() -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    model = TextRetriever(candidates=4).fit(_documents())
    queries = np.array(["red car", "apple pie", "nothing known"])
    sims = model.similarities(queries)
    vectorizer = model.vectorizer_
    expected = cosine_similarity(vectorizer.transform(queries), vectorizer.transform(TEXTS))
    np.testing.assert_allclose(sims, expected, atol=1e-6)
    items, scores = model.recommend(queries, 3)
    assert items[0, 0] == 12
    assert items[1, 0] == 10
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert items.shape == (3, 3)  # k is capped by the candidates, not by matches
    np.testing.assert_array_equal(scores[2], 0.0)  # an unknown query matches nothing


def test_the_ranker_learns_the_feature_that_drives_clicks() -> None:
    rng = np.random.default_rng(0)
    quality = rng.normal(0, 1, len(TEXTS))
    model_docs = _documents(quality[:, None])
    queries = rng.choice(["apple", "red", "car", "pie"], 3000)
    doc_rows = rng.integers(0, len(TEXTS), 3000)
    sims = TextRetriever().fit(model_docs).similarities(queries)[np.arange(3000), doc_rows]
    clicks = rng.random(3000) < 1 / (1 + np.exp(-(4 * sims + 1.5 * quality[doc_rows] - 2)))
    judged = Judgments(queries, model_docs.ids[doc_rows], clicks.astype(int))
    ranker = TextRetriever(candidates=6, ranker=True).fit(model_docs, judged)
    # The click model's coefficients come back in raw units (standardization folded back).
    assert ranker.weights_[0] == pytest.approx(4.0, abs=1.0)
    assert ranker.weights_[1] == pytest.approx(1.5, abs=0.4)
    assert ranker.bias_ == pytest.approx(-2.0, abs=0.6)
    baseline = TextRetriever(candidates=6).fit(model_docs)
    np.testing.assert_array_equal(baseline.weights_, [1.0, 0.0])


def test_fit_errors_name_the_fix() -> None:
    with pytest.raises(TrainingError, match="unique"):
        Documents(np.array([1, 1]), np.array(["a", "b"]))
    with pytest.raises(TrainingError, match="needs judged"):
        TextRetriever(ranker=True).fit(_documents())
    with pytest.raises(TrainingError, match="not fitted"):
        TextRetriever().recommend(np.array(["a"]), 2)
    judged = Judgments(np.array(["apple"]), np.array([999]), np.array([1]))
    with pytest.raises(TrainingError, match="not in Documents"):
        TextRetriever(ranker=True).fit(_documents(), judged)
    with pytest.raises(SpecError, match="not a text retrieval family"):
        build_text_retriever({}, family="bm42", text=None, candidates=5, features=0, seed=0)
    with pytest.raises(SpecError, match="document features"):
        build_text_retriever({}, family="tfidf_ranker", text=None, candidates=5, features=0, seed=0)
    with pytest.raises(SpecError, match="regularization"):
        build_text_retriever(
            {"regularization": -1}, family="tfidf", text=None, candidates=5, features=0, seed=0
        )


@pytest.mark.parametrize("ranker", [False, True])
def test_one_onnx_graph_matches_the_native_lists(ranker: bool) -> None:
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(300)]
    texts = np.array([" ".join(rng.choice(vocab, 8)) for _ in range(400)])
    docs = Documents(np.arange(5000, 5400), texts, rng.normal(size=(400, 2)))
    queries = np.array([" ".join(rng.choice(vocab, 2)) for _ in range(200)] + ["", "unknown words", "W1 w1"])
    judged = Judgments(queries[:200], rng.integers(5000, 5400, 200), rng.integers(0, 2, 200))
    model = TextRetriever(candidates=40, ranker=ranker).fit(docs, judged)
    graph = text_retrieval_to_onnx(model, 10, "query", metadata={"spec_hash": "x"}, name="t")
    report = text_retrieval_parity(graph, model, queries, 10, tolerance=1e-5, input_name="query")
    assert report["passed"], report
    assert report["item_mismatches"] == 0
    assert report["k"] == 10
    items, scores = session(graph).run(["items", "scores"], text_feeds(queries[:3], "query"))
    assert items.dtype == np.int64
    assert scores.shape == (3, 10)
    assert {p.key: p.value for p in graph.metadata_props} == {"spec_hash": "x"}
    # The gate can fail: a graph of another model's weights does not match.
    model.weights_ = model.weights_ * np.float32(-1)
    assert not text_retrieval_parity(graph, model, queries, 10, tolerance=1e-5, input_name="query")["passed"]


def test_mrr_at_k_by_hand() -> None:
    ranked = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]])
    relevant = [np.array([2]), np.array([9]), np.array([7, 8]), np.array([], dtype=int)]
    # ranks 2, none, 1; the last user has nothing relevant and is left out
    assert mrr_at_k(ranked, relevant, k=3) == pytest.approx((0.5 + 0 + 1) / 3)
    assert mrr_at_k(ranked, relevant, k=1) == pytest.approx(1 / 3)
    assert RETRIEVAL_METRICS["mrr_at_k"] is mrr_at_k


def _video_spec() -> dict[str, Any]:
    return dict(yaml.safe_load((PROBLEMS / "video_search" / "problem.yml").read_text())["problem"])


def test_the_spec_reads_the_query_and_checks_the_block() -> None:
    spec = spec_from_mapping(_video_spec())
    (graph_input,) = spec.model_input_schema()
    assert graph_input.name == "query"
    assert graph_input.dtype == "string"
    assert graph_input.text is not None
    assert spec.inputs_of(spec.baseline) == spec.model_input_schema()
    assert spec.ranker_features(spec.model) == ["video_imps_7d", "video_ctr_7d", "video_log_views_7d"]
    assert spec.ranker_features(spec.baseline) == []
    bad = copy.deepcopy(_video_spec())
    bad["serving"]["context"]["query"].pop("text")
    bad["baseline"]["inputs"] = ["video_ctr_7d"]
    bad["text_retrieval"]["document_text"] = "nope"
    with pytest.raises(ValueError, match="text_retrieval") as info:
        spec_from_mapping(bad)
    text = str(info.value)
    assert "text_retrieval.query: 'query' must be a serving.context column with text:" in text
    assert "baseline.inputs: a text retrieval model reads the query" in text
    assert "text_retrieval.document_text: 'nope'" in text
    wrong_task = {**_video_spec(), "task": "ranking"}
    with pytest.raises(ValueError, match="only a task retrieval problem"):
        spec_from_mapping(wrong_task)


def test_nodes_dispatch_to_the_text_retrieval_versions() -> None:
    from mlsd.pipelines.training import split_training_set

    ts = pd.date_range("2026-01-01", periods=240, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "search_id": np.arange(240),
            "user_id": np.arange(240) % 7,
            "video_id": np.arange(240) % 11,
            "query": [f"q{i % 5}" for i in range(240)],
            "clicked": np.arange(240) % 2,
            "ts": ts,
        }
    )
    training = {"holdout": "2d", "validation": "2d", "parity_rows": 3}
    *spans, parity, _report = split_training_set(_video_spec(), training, frame)
    assert sum(len(s) for s in spans) == 240
    assert list(parity.columns) == ["query"]  # the text version: queries, then the edge cases
    assert parity["query"].tolist()[-2:] == ["", "qqqzzz xxyyzz"]
    plain = {key: value for key, value in _video_spec().items() if key != "text_retrieval"}
    plain["model"] = {"family": "implicit_mf"}
    plain["baseline"] = {"family": "popularity"}
    plain["serving"] = {**plain["serving"], "context": {}}
    plain["drift"] = {"columns": ["user_imps_7d"]}
    *_, ids, _ = split_training_set(plain, training, frame)
    assert list(ids.columns) == ["user_id"]  # the factor retrieval version: user ids
