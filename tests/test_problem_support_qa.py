"""support_qa: the generator's truth (one right article per answerable question, none for a
question a person must handle), the intent model and escalation head against TF-IDF and the
oracle with ONNX parity, the decision metrics, the simulator, and (slow) the kedro run and served
answers and escalations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlsd.errors import SpecError
from mlsd.evaluation.retrieval import (
    check_retrieval_metrics,
    containment_rate,
    escalation_precision,
    wrong_answer_rate,
)
from mlsd.export import ANSWER_OUTPUT, session, text_feeds, text_retrieval_parity, text_retrieval_to_onnx
from mlsd.pipelines import text_retrieval as nodes
from mlsd.problems import support_qa
from mlsd.serving.prediction_log import read_log
from mlsd.serving.rollout import served_outputs
from mlsd.spec import MetricSpec, load_spec
from mlsd.training import Documents, Judgments, TextRetriever
from tests.conftest import PROBLEMS, catalog_project, served_copy, short_tmp_dir
from tests.server import post, serving

SPEC = load_spec(PROBLEMS / "support_qa" / "problem.yml")
SMALL: dict[str, Any] = {"tickets_per_day": 250, "days": 14, "n_customers": 500, "end": "2026-06-01"}


def _world() -> support_qa.SupportWorld:
    return support_qa.SupportWorld.create(support_qa.GeneratorParams.model_validate(SMALL))


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    raw = support_qa.generate(SPEC, SMALL)
    events = support_qa.build_events(SPEC, raw)
    return {**raw, "events": events, **support_qa.build_feature_tables(SPEC, raw, events, {})}


def test_the_truth_is_one_article_per_answerable_question(world: dict[str, pd.DataFrame]) -> None:
    events = world["events"]
    articles = world["articles"]["article_id"].to_numpy()
    tickets = world["tickets"].sample(400, random_state=0)
    truth = support_qa.true_rates(SPEC, SMALL, tickets["question"].to_numpy(), articles)
    per_question = truth.sum(axis=1)
    assert set(np.unique(per_question)) == {0.0, 1.0}  # one right article, or none (a person)
    assert 0.05 < (per_question == 0).mean() < 0.4
    # The stored truth of every logged pair is the recomputed one.
    sample = events.sample(500, random_state=0)
    again = support_qa.true_rates(SPEC, SMALL, sample["question"].to_numpy(), sample["article_id"].to_numpy())
    np.testing.assert_array_equal(np.diag(again), sample["true_p"])
    assert np.isnan(support_qa.true_rates(SPEC, SMALL, np.array(["how do i"]), np.array([1]))).all()
    # The logs: only right articles resolve tickets; a person's tickets are never resolved.
    assert (events.loc[events["resolved"] == 1, "true_p"] == 1).all()
    answerable = events.groupby("ticket_id")["true_p"].max()
    resolved = events.groupby("ticket_id")["resolved"].max()
    assert (resolved[answerable == 0] == 0).all()
    assert resolved[answerable == 1].mean() == pytest.approx(0.95, abs=0.02)  # tag_rate


def test_paraphrases_are_words_no_article_uses() -> None:
    w = _world()
    text = " ".join(w.articles["title"] + " " + w.articles["body"]).split()
    assert not set(w.paraphrases.ravel()) & set(text)
    assert set(w.keys[w.answerable].ravel()) <= set(text)
    # Every intent word has one owner, so a question's intent is a function of its text.
    words = [*w.keys.ravel(), *w.paraphrases.ravel()]
    assert len(set(words)) == len(words) == len(w.owner)
    rng = np.random.default_rng(3)
    for intent in rng.integers(0, len(w.popularity), 50):
        assert w.intent_of(w.question(rng, int(intent))) == intent


def test_customer_activity_counts_the_window_before_the_snapshot(world: dict[str, pd.DataFrame]) -> None:
    table, tickets = world["customer_activity"], world["tickets"]
    row = table[table["customer_tickets_30d"] > 1].iloc[len(table) // 4]
    at, customer = row["event_timestamp"], row["customer_id"]
    mine = tickets[(tickets["customer_id"] == customer) & (tickets["ts"] < at)]
    assert row["customer_tickets_30d"] == (mine["ts"] >= at - pd.Timedelta(days=30)).sum()


def _training_set(world: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The events with each customer's latest snapshot at or before the ticket (what Feast joins)."""
    stats = world["customer_activity"].sort_values("event_timestamp")
    joined = pd.merge_asof(
        world["events"].sort_values("ts"),
        stats,
        left_on="ts",
        right_on="event_timestamp",
        by="customer_id",
        direction="backward",
    )
    fields = SPEC.feature_fields()
    return joined.fillna(
        {n: fields[n].default for n in ("customer_tickets_30d", "customer_resolve_rate_30d")}
    )


@pytest.fixture(scope="module")
def fitted(world: dict[str, pd.DataFrame]) -> dict[str, Any]:
    problem = SPEC.model_dump(mode="json")
    training = {"seed": 0}
    train, valid, holdout, parity_rows, _ = nodes.split_training_set(problem, training, _training_set(world))
    ray = {"num_cpus": 1}
    best = {"best_params": {**SPEC.model.params, "regularization": 3.0}}
    model, _ = nodes.fit_model(problem, training, ray, train, valid, best)
    baseline, _ = nodes.fit_baseline(problem, training, ray, train, valid)
    split = {"holdout_start": str(holdout["ts"].min())}
    evaluation, *_ = nodes.evaluate_models(problem, model, baseline, holdout, split, SMALL)
    return {
        "problem": problem,
        "model": model,
        "baseline": baseline,
        "eval": evaluation,
        "parity": parity_rows,
    }


def test_the_intent_model_beats_tfidf_on_articles_and_decisions(fitted: dict[str, Any]) -> None:
    metrics = fitted["eval"]["metrics"]
    model, baseline, oracle = metrics["model"], metrics["baseline"], metrics["oracle"]
    assert oracle["mrr_at_k"] == oracle["recall_at_k"] == oracle["escalation_precision"] == 1.0
    assert oracle["wrong_answer_rate"] == 0.0
    assert baseline["mrr_at_k"] + 0.2 < model["mrr_at_k"] < 1.0, metrics
    assert oracle["mrr_at_k"] - model["mrr_at_k"] < 0.3, metrics  # the smoke gate
    assert baseline["containment_rate"] + 0.15 < model["containment_rate"] <= oracle["containment_rate"]
    assert model["wrong_answer_rate"] < 0.15 < baseline["wrong_answer_rate"], metrics
    assert model["escalation_precision"] > 0.5, metrics
    holdout = fitted["eval"]["holdout"]
    # The oracle answers exactly the questions an article answers.
    assert oracle["containment_rate"] == pytest.approx(1 - holdout["needing_a_person"] / holdout["queries"])
    gates = {(g["metric"], g["check"]): g["passed"] for g in fitted["eval"]["gates"]}
    assert gates[("containment_rate", "must_beat_baseline")]
    assert gates[("mrr_at_k", "must_beat_baseline")]


def test_escalation_learns_the_words_that_need_a_person(fitted: dict[str, Any]) -> None:
    w = _world()
    model: TextRetriever = fitted["model"]
    rng = np.random.default_rng(11)
    person = np.flatnonzero(~w.answerable)
    common = np.flatnonzero(w.answerable)[np.argsort(-w.popularity[w.answerable])[:5]]
    to_person = [w.question(rng, int(i)) for i in person for _ in range(5)]
    answerable = [" ".join(["how", "do", "i", *w.keys[i]]) for i in common]
    assert (model.answer_p(np.array(to_person)) < 0.5).mean() > 0.8
    assert (model.answer_p(np.array(answerable)) >= 0.5).all()
    ids = model.recommend(np.array(answerable), 1)[0][:, 0]
    np.testing.assert_array_equal(ids, w.article_of[common])


def test_the_graph_gives_the_articles_and_answer_p_with_parity(fitted: dict[str, Any]) -> None:
    problem, model = fitted["problem"], fitted["model"]
    graph = nodes.export_model(problem, model)
    parity = nodes.check_parity(problem, {"parity_tolerance": 1e-5}, graph, model, fitted["parity"])
    assert parity["passed"], parity
    assert parity["item_mismatches"] == 0
    assert parity["answer_p_max_abs_diff"] <= 1e-5
    queries = fitted["parity"]["question"].to_numpy()[:20]
    (answer_p,) = session(graph).run([ANSWER_OUTPUT], text_feeds(queries, "question"))
    np.testing.assert_allclose(answer_p, model.answer_p(queries), atol=1e-5)
    assert served_outputs(SPEC) == ("items", "scores", ANSWER_OUTPUT)
    # A graph whose head differs does not pass as the model's.
    shifted = TextRetriever(**model.get_params())
    shifted.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    shifted.answer_bias_ = model.answer_bias_ + 0.5
    other = text_retrieval_to_onnx(shifted, 5, "question")
    failed = text_retrieval_parity(other, model, queries, 5, tolerance=1e-5, input_name="question")
    assert not failed["passed"]
    assert failed["item_mismatches"] == 0
    # And one without a head at all is refused with ORT's reason, by name.
    del shifted.answer_weights_, shifted.answer_bias_
    headless = text_retrieval_to_onnx(shifted, 5, "question")
    plain = text_retrieval_parity(headless, model, queries, 5, tolerance=1e-5, input_name="question")
    assert not plain["passed"]
    assert ANSWER_OUTPUT in plain["error"]


README = PROBLEMS / "support_qa" / "README.md"


def readme_request() -> dict[str, Any]:
    """The request of the README's curl example."""
    (body,) = re.findall(r"-d '(\{.*?\})'", README.read_text())
    return dict(json.loads(body))


def test_the_readme_question_is_one_the_world_answers() -> None:
    w, question = _world(), readme_request()["question"]
    intent = w.intent_of(question)
    assert intent >= 0, f"{question!r} holds no word of the world"
    assert w.answerable[intent]
    assert intent == int(np.argmax(w.popularity))  # the most common intent, as the README says
    assert f'{w.article_of[intent]} ("{w.articles.set_index("article_id").title[w.article_of[intent]]}")' in (
        " ".join(README.read_text().split())
    )


def test_words_match_whatever_their_case_natively_and_in_the_graph(fitted: dict[str, Any]) -> None:
    model, w = fitted["model"], _world()
    question = readme_request()["question"]
    asked = np.array([question, question.upper(), question.title(), f"  {question.upper()}!"], dtype=object)
    items, scores = model.recommend(asked, 3)
    answer_p = model.answer_p(asked)
    assert (items == items[0]).all()
    np.testing.assert_allclose(scores, np.repeat(scores[:1], len(asked), axis=0), rtol=1e-6)
    np.testing.assert_allclose(answer_p, answer_p[0], rtol=1e-6)
    assert items[0, 0] == w.article_of[w.intent_of(question)]
    assert answer_p[0] >= 0.5
    graph = nodes.export_model(fitted["problem"], model)
    onnx_items, onnx_scores, onnx_p = session(graph).run(None, text_feeds(asked, "question"))
    np.testing.assert_array_equal(onnx_items[:, :3], items)  # the graph lists serving.top_k
    np.testing.assert_allclose(onnx_scores[:, :3], scores, atol=1e-5)
    np.testing.assert_allclose(onnx_p, answer_p, atol=1e-5)


def test_a_question_without_a_known_word_is_escalated_not_answered(fitted: dict[str, Any]) -> None:
    model = fitted["model"]
    unknown = np.array(
        ["how do i reset my password", "HOW DO I RESET MY PASSWORD", "xyzzy plugh", "how do i", ""],
        dtype=object,
    )
    np.testing.assert_array_equal(model.answer_p(unknown), 0.0)
    graph = nodes.export_model(fitted["problem"], model)
    (onnx_p,) = session(graph).run([ANSWER_OUTPUT], text_feeds(unknown, "question"))
    np.testing.assert_array_equal(onnx_p, 0.0)
    # The stop words (max_df) are the filler every question has, not the words of an intent.
    vocabulary = set(model.vectorizer_.vocabulary_)
    assert not {"how", "do", "i", "my"} & vocabulary
    w = _world()
    assert set(w.keys[w.answerable].ravel()) <= vocabulary  # every word of every article


def test_decision_metrics_count_every_question() -> None:
    ranked = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    relevant = [np.array([1]), np.array([4]), np.array([], dtype=int), np.array([], dtype=int)]
    answered = np.array([True, True, False, True])
    # q0 right and answered; q1 wrong top, answered; q2 needs a person, escalated; q3 needs one, answered.
    assert containment_rate(ranked, relevant, answered) == 0.25
    assert escalation_precision(ranked, relevant, answered) == 1.0
    assert wrong_answer_rate(ranked, relevant, answered) == pytest.approx(2 / 3)
    assert escalation_precision(ranked, relevant, np.ones(4, dtype=bool)) == 0.0
    with pytest.raises(ValueError, match="answered"):
        containment_rate(ranked, relevant, answered[:3])
    decision = MetricSpec(name="containment_rate", higher_is_better=True)
    first = MetricSpec(name="mrr_at_k", higher_is_better=True, params={"k": 5})
    with pytest.raises(SpecError, match=r"text_retrieval\.escalation"):
        check_retrieval_metrics([first, decision])
    check_retrieval_metrics([first, decision], decisions=True)
    with pytest.raises(SpecError, match="metrics\\[0\\]"):
        check_retrieval_metrics([decision, first], decisions=True)


def test_an_intent_retriever_needs_resolved_searches() -> None:
    docs = Documents(ids=np.array([1, 2]), texts=np.array(["reset password", "refund order"]))
    with pytest.raises(Exception, match="intent=True"):
        TextRetriever(intent=True).fit(docs)
    one = Judgments(np.array(["pwd", "pwd"]), np.array([1, 1]), np.array([1, 1]), groups=np.array([1, 2]))
    with pytest.raises(Exception, match="at least two documents"):
        TextRetriever(intent=True).fit(docs, one)
    all_resolved = Judgments(np.array(["pwd", "money"]), np.array([1, 2]), np.array([1, 1]))
    with pytest.raises(Exception, match="resolved and searches that were not"):
        TextRetriever(intent=True, escalation=True).fit(docs, all_resolved)


def test_simulate_sends_questions_and_scenarios() -> None:
    requests, true_p = support_qa.simulate(SPEC, SMALL, 200, "none", seed=1)
    assert set(requests[0]) == {"customer_id", "question"}
    assert set(np.unique(true_p)) == {0.0, 1.0}
    w = _world()
    shifted, _ = support_qa.simulate(SPEC, SMALL, 60, "covariate_shift", seed=1)
    assert all(w.domain[w.intent_of(r["question"])] == 0 for r in shifted)
    fresh, _ = support_qa.simulate(SPEC, SMALL, 5, "new_entities", seed=1)
    assert all(r["customer_id"] > SMALL["n_customers"] for r in fresh)
    with pytest.raises(ValueError, match="scenario"):
        support_qa.simulate(SPEC, SMALL, 5, "concept_drift", seed=1)


# --- the whole loop on small data ------------------------------------------------------------


@pytest.fixture(scope="module")
def support_project() -> Iterator[Path]:
    smoke = yaml.safe_load((PROBLEMS / "support_qa" / "smoke.yml").read_text())
    yield from catalog_project("support_qa", smoke["params"], smoke["gate"])


@pytest.mark.slow
def test_kedro_run_then_serve_answers_and_escalations(support_project: Path) -> None:
    reports = support_project / "data" / "08_reporting"
    evaluation = json.loads((reports / "evaluation.json").read_text())
    assert evaluation["passed"], evaluation["gates"]
    assert "containment_rate" in evaluation["metrics"]["model"]
    assert json.loads((reports / "parity.json").read_text())["passed"]
    project = served_copy(support_project, short_tmp_dir() / "p")
    w = _world()
    common = int(np.flatnonzero(w.answerable)[np.argmax(w.popularity[w.answerable])])
    person = int(np.flatnonzero(~w.answerable)[np.argmax(w.popularity[~w.answerable])])
    rng = np.random.default_rng(5)
    with serving(project) as srv:
        question = " ".join(["how", "do", "i", *w.keys[common]])
        status, body = post(f"{srv.url}/predict", {"customer_id": 5, "question": question, "k": 3})
        assert status == 200, body
        assert len(body["items"]) == 3
        assert body["items"][0] == w.article_of[common]
        assert body["answer"] is True
        assert body["answer_p"] >= 0.5
        asks = [w.question(rng, person) for _ in range(10)]
        answers = [post(f"{srv.url}/predict", {"customer_id": 6, "question": q})[1] for q in asks]
        assert sum(not a["answer"] for a in answers) >= 7, answers  # handed to a person
        status, body = post(f"{srv.url}/predict", {"customer_id": 5})
        assert status == 400
        assert "question" in str(body)
        # The README's request, as documented and in capitals: the same article, answered.
        example = readme_request()
        status, body = post(f"{srv.url}/predict", example)
        assert status == 200, body
        assert body["items"][0] == w.article_of[w.intent_of(example["question"])]
        assert body["answer"] is True
        status, shouted = post(f"{srv.url}/predict", {**example, "question": example["question"].upper()})
        assert status == 200, shouted
        assert shouted["items"] == body["items"]
        assert shouted["answer_p"] == pytest.approx(body["answer_p"], abs=1e-6)
        # An English question has no word of this world: escalated, not answered.
        status, english = post(
            f"{srv.url}/predict", {"customer_id": 5, "question": "how do i reset my password"}
        )
        assert status == 200, english
        assert english["answer"] is False
        assert english["answer_p"] == 0.0
    served = [r for r in read_log(project / "data" / "07_model_output" / "predictions") if r["served"]]
    assert len(served) == 14  # the bad request is not logged
    assert sum(not r["answer"] for r in served) == sum(not a["answer"] for a in answers) + 1
    assert all(0 <= r["answer_p"] <= 1 for r in served)
