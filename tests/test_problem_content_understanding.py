"""The content_understanding problem and the multi-label archetype it brought: vector fields in the
spec and the request, label classes, the generator's truth (topics visible in one modality only),
macro/micro metrics on planted cases, one model per class exported as ONE graph with per-class
parity, and the late-fusion model against the caption-only baseline and the oracle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from mlsd.errors import ExportError, SpecError
from mlsd.evaluation import check_multilabel_metrics, multilabel_metric, multilabel_report
from mlsd.evaluation.metrics import f1
from mlsd.export import MULTILABEL_OUTPUT, multilabel_to_onnx, parity_report, session, signature
from mlsd.monitoring.traffic import feedback_records
from mlsd.problems import content_understanding as cu
from mlsd.serving import LabelScores, api_models
from mlsd.spec import ColumnSpec, MetricSpec, ProblemSpec, load_spec, spec_hash
from mlsd.training import labels, model_frame, time_split
from mlsd.training.families import get_family
from mlsd.training.multilabel import OneModelPerLabel
from mlsd.validation.suite import table_suite
from tests.conftest import PROBLEMS

FOLDER = PROBLEMS / "content_understanding"
SMALL: dict[str, Any] = {"n_posts": 12_000, "end": "2026-01-22T00:00:00"}


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return load_spec(FOLDER / "problem.yml")


@pytest.fixture(scope="module")
def params() -> dict[str, Any]:
    generator: dict[str, Any] = yaml.safe_load((FOLDER / "parameters_problem.yml").read_text())["generator"]
    return {**generator, **SMALL}


@pytest.fixture(scope="module")
def events(spec: ProblemSpec, params: dict[str, Any]) -> pd.DataFrame:
    raw = cu.generate(spec, params)
    return cu.build_events(spec, raw).assign(followers=0.0)


@pytest.fixture(scope="module")
def fitted(spec: ProblemSpec, events: pd.DataFrame) -> dict[str, Any]:
    split = time_split(events, "ts", pd.Timedelta(days=2), pd.Timedelta(days=1))
    train = pd.concat([split.train, split.valid])
    out: dict[str, Any] = {"holdout": split.holdout}
    for role, m in (("model", spec.model), ("baseline", spec.baseline)):
        inputs = spec.inputs_of(m)
        pipeline = get_family(m.family).build(inputs, m.params, 0, 1)
        out[role] = OneModelPerLabel(pipeline).fit(model_frame(inputs, train), labels(spec, train))
    return out


# --- spec: vectors and classes -------------------------------------------------------------------


def test_a_vector_field_is_one_model_input_per_element(spec: ProblemSpec) -> None:
    inputs = spec.model_input_schema()
    vector = [i for i in inputs if i.vector == "image_emb"]
    assert [i.name for i in vector] == [f"image_emb_{k}" for k in range(16)]
    assert [i.index for i in vector] == list(range(16))
    assert all(i.dtype == "float32" for i in vector)
    assert [i.name for i in spec.inputs_of(spec.baseline)] == ["text"]


def test_label_classes_name_one_label_and_truth_column_each(spec: ProblemSpec) -> None:
    assert spec.label.columns() == [f"topic_{c}" for c in spec.label.classes or []]
    assert spec.label.truth_columns()[0] == "true_p_sports"


def test_a_vector_needs_a_float_dtype_and_classes_need_task_multilabel(spec: ProblemSpec) -> None:
    with pytest.raises(ValidationError, match="dim"):
        ColumnSpec(dtype="string", dim=4)
    data = spec.model_dump(mode="json")
    data["task"] = "binary_classification"
    with pytest.raises(ValidationError, match=r"label\.classes"):
        ProblemSpec.model_validate(data)
    data = spec.model_dump(mode="json")
    data["label"]["classes"] = ["sports", "cooking"]
    with pytest.raises(ValidationError, match="topic_cooking"):
        ProblemSpec.model_validate(data)


def test_new_optional_fields_leave_other_specs_hash_alone() -> None:
    bad_ads = load_spec(PROBLEMS / "bad_ads" / "problem.yml")
    dumped = bad_ads.model_dump(mode="json")
    assert "dim" not in dumped["serving"]["context"]["body"]
    assert "classes" not in dumped["label"]
    assert spec_hash(bad_ads) == spec_hash(ProblemSpec.model_validate(dumped))


def test_a_vector_is_validated_element_by_element(spec: ProblemSpec) -> None:
    columns = {c.column for c in table_suite(spec, "events") if c.column}
    assert {f"image_emb_{k}" for k in range(16)} <= columns
    assert "image_emb" not in columns


def test_the_request_takes_exactly_dim_numbers(spec: ProblemSpec) -> None:
    request = api_models(spec, max_batch=8).request
    good = {"author_id": 3, "text": "goal team", "image_emb": [0.1] * 16}
    assert request.model_validate(good).model_dump()["image_emb"] == [0.1] * 16
    for bad in ([0.1] * 15, [0.1] * 17, ["0.1"] * 16, [0.1] * 15 + [None], [0.1] * 15 + [50.0]):
        with pytest.raises(ValidationError) as err:
            request.model_validate({**good, "image_emb": bad})
        assert err.value.errors()[0]["loc"][0] == "image_emb"


# --- generator -----------------------------------------------------------------------------------


def test_truth_is_the_annotators_rate_and_labels_follow_it(
    spec: ProblemSpec, events: pd.DataFrame, params: dict[str, Any]
) -> None:
    truth = events[spec.label.truth_columns()].to_numpy()
    assert set(np.unique(truth).round(6)) == {params["label_noise"], 1 - params["label_noise"]}
    y = events[spec.label.columns()].to_numpy()
    present = truth > 0.5
    assert abs(y[present].mean() - (1 - params["label_noise"])) < 0.01
    assert abs(y[~present].mean() - params["label_noise"]) < 0.01


def test_topics_show_only_in_their_modality(events: pd.DataFrame, params: dict[str, Any]) -> None:
    emb = events[[f"image_emb_{k}" for k in range(16)]].to_numpy()
    for topic, shown in params["visibility"].items():
        present = events[f"true_p_{topic}"].to_numpy() > 0.5
        words = events["text"].str.contains(rf"\b(?:{'|'.join(cu.TOPIC_WORDS[topic])})\b")
        word_lift = words[present].mean() - words[~present].mean()
        image_shift = np.linalg.norm(emb[present].mean(axis=0) - emb[~present].mean(axis=0))
        assert (word_lift > 0.3) == (shown != "image"), topic
        assert (image_shift > 0.8) == (shown != "text"), topic


# --- metrics on planted cases --------------------------------------------------------------------


def test_macro_and_micro_average_differently_by_hand() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    p = np.array([[0.9, 0.6], [0.2, 0.7], [0.8, 0.1], [0.3, 0.4]])
    macro = MetricSpec(name="macro_f1", higher_is_better=True)
    micro = MetricSpec(name="micro_f1", higher_is_better=True)
    # class 0: flags rows 0, 2 (both right): F1 1; class 1: flags rows 0, 1 (both wrong), misses 3: F1 0
    assert multilabel_metric(macro, y, p) == pytest.approx(0.5)
    # pooled: 4 flagged, 2 right, 3 positives -> 2 * 2 / (4 + 3)
    assert multilabel_metric(micro, y, p) == pytest.approx(4 / 7)
    assert f1(y[:, 0], p[:, 0]) == 1.0


def test_unknown_multilabel_metrics_are_named() -> None:
    with pytest.raises(SpecError, match="pr_auc"):
        check_multilabel_metrics([MetricSpec(name="pr_auc", higher_is_better=True)])
    with pytest.raises(SpecError, match="ndcg_at_k"):
        check_multilabel_metrics([MetricSpec(name="macro_ndcg_at_k", higher_is_better=True)])


def test_the_report_gates_on_averages_and_lists_every_class(spec: ProblemSpec) -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.01, 0.99, (400, 6))
    y = (rng.random(truth.shape) < truth).astype(int)
    scores = {"model": truth, "baseline": rng.random(truth.shape), "oracle": truth}
    report = multilabel_report(spec.metrics, spec.label.classes or [], y, scores, holdout={})
    assert report["passed"]
    assert set(report["per_label"]["model"]) == set(spec.label.classes or [])
    worse = multilabel_report(
        spec.metrics, spec.label.classes or [], y, {**scores, "model": scores["baseline"]}, holdout={}
    )
    assert not worse["passed"]


# --- model, export, gates -------------------------------------------------------------------------


def test_one_graph_scores_every_class_with_parity(spec: ProblemSpec, fitted: dict[str, Any]) -> None:
    inputs = spec.model_input_schema()
    classes = list(spec.label.classes or [])
    graph = multilabel_to_onnx(fitted["model"], inputs, classes, name="t")
    assert signature(graph)["outputs"] == [{"name": MULTILABEL_OUTPUT, "dtype": "float32", "shape": ["N", 6]}]
    frame = model_frame(inputs, fitted["holdout"].head(300))
    report = parity_report(
        graph, fitted["model"], inputs, frame, tolerance=1e-5, output=MULTILABEL_OUTPUT, classes=classes
    )
    assert report["passed"]
    assert set(report["per_label"]) == set(classes)
    assert max(report["per_label"].values()) < 1e-5
    session(graph)  # loads in ONNX Runtime as one session
    with pytest.raises(ExportError, match="6 fitted pipelines for 7 classes"):
        multilabel_to_onnx(fitted["model"], inputs, [*classes[:5], "x", "y"])


def test_late_fusion_beats_the_caption_and_nears_the_oracle(
    spec: ProblemSpec, fitted: dict[str, Any]
) -> None:
    holdout = fitted["holdout"]
    scores = {
        "model": fitted["model"].predict_score(model_frame(spec.inputs_of(spec.model), holdout)),
        "baseline": fitted["baseline"].predict_score(model_frame(spec.inputs_of(spec.baseline), holdout)),
        "oracle": holdout[spec.label.truth_columns()].to_numpy(),
    }
    report = multilabel_report(
        spec.metrics, spec.label.classes or [], labels(spec, holdout), scores, holdout={}
    )
    assert report["passed"], report["gates"]
    per = report["per_label"]
    for topic in ("travel", "fashion"):  # image-only: the caption model is near chance
        assert per["model"][topic]["pr_auc"] > per["baseline"][topic]["pr_auc"] + 0.3


# --- serving and monitoring shapes ---------------------------------------------------------------


def test_the_response_names_the_class_of_every_score(spec: ProblemSpec) -> None:
    response = api_models(spec, max_batch=8).prediction
    assert response is LabelScores
    body = {
        "request_id": "r1",
        "scores": {"sports": 0.9, "food": 0.1},
        "labels": ["sports"],
        "score": 0.5,
        "model_tag": "content_understanding:abc",
        "variant": "stable",
    }
    assert response.model_validate(body).scores["sports"] == 0.9
    with pytest.raises(ValidationError):
        response.model_validate({**body, "scores": [0.9, 0.1]})  # a bare list says no class


def test_embedding_drift_is_watched_per_dimension(spec: ProblemSpec) -> None:
    assert spec.drift_inputs() == ["text", *(f"image_emb_{k}" for k in range(16)), "followers"]


def test_feedback_draws_every_class(spec: ProblemSpec, params: dict[str, Any]) -> None:
    requests, truth = cu.simulate(spec, params, 400, "none", seed=3)
    assert truth.shape == (400, 6)
    assert len(requests[0]["image_emb"]) == 16
    api_models(spec, max_batch=8).request.model_validate(requests[0])
    for i, r in enumerate(requests):
        r["request_id"] = str(i)
    records = feedback_records(requests, truth, range(400), seed=3, delay_s=1.0)
    assert all(len(r["labels"]) == 6 and r["label"] == pytest.approx(np.mean(r["labels"])) for r in records)
    assert abs(np.mean([r["label"] for r in records]) - truth.mean()) < 0.03
