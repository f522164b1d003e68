"""Free-text inputs (the archetype bad_ads brings): a ``text:`` column in the spec is read as TF-IDF
inside the ONNX graph, validated as a string in requests, and watched for drift by token counts.

Built on the root (ad_click) spec with one text field added to its events and request context,
so nothing here depends on a catalog problem.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from mlsd.design.modeling import model as model_section
from mlsd.design.operations import serving as serving_section
from mlsd.errors import SpecError
from mlsd.export import parity_report, to_onnx
from mlsd.monitoring.drift import DriftParams, column_kinds, drift_report, summarize, token_counts
from mlsd.serving import api_models
from mlsd.spec import ModelInput, ProblemSpec, TextSpec, spec_from_mapping, spec_hash
from mlsd.training import model_frame
from mlsd.training.families import get_family

ROOT_SPEC = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"
TEXT = {"max_features": 50, "min_df": 1, "max_chars": 120}


@pytest.fixture
def plain() -> dict[str, Any]:
    return yaml.safe_load(ROOT_SPEC.read_text())["problem"]


@pytest.fixture
def with_text(plain: dict[str, Any]) -> dict[str, Any]:
    """The root spec plus ``ad_text``: an events column sent in the request as free text."""
    spec = copy.deepcopy(plain)
    spec["tables"][spec["label"]["table"]]["columns"]["ad_text"] = {"dtype": "string"}
    spec["serving"]["context"]["ad_text"] = {"dtype": "string", "text": TEXT}
    return spec


def _error(spec: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_mapping(spec)
    return str(info.value)


# --- the spec ------------------------------------------------------------------------------------


def test_a_text_field_becomes_a_string_model_input_carrying_its_tfidf_settings(with_text) -> None:
    spec = spec_from_mapping(with_text)
    last = spec.model_input_schema()[-1]
    assert (last.name, last.dtype, last.categories) == ("ad_text", "string", None)
    assert last.text == TextSpec(**TEXT)
    assert spec.text_inputs() == ["ad_text"]


def test_text_needs_an_open_string_column(with_text) -> None:
    with_text["serving"]["context"]["hour"]["text"] = TEXT
    assert "text needs dtype string" in _error(copy.deepcopy(with_text))
    del with_text["serving"]["context"]["hour"]["text"]
    with_text["serving"]["context"]["category"] = {"dtype": "string", "allowed": ["a"], "text": TEXT}
    assert "no allowed list" in _error(with_text)


def test_specs_without_the_new_fields_keep_their_dump_and_hash(plain, with_text) -> None:
    """``text`` and ``model.inputs`` leave the dump when unset, so every spec written before them
    keeps its spec_hash (registered models still match); setting one changes the hash."""
    spec = spec_from_mapping(plain)
    dumped = json.dumps(spec.model_dump(mode="json"))
    assert '"text"' not in dumped
    assert '"inputs"' not in dumped
    subset = copy.deepcopy(plain)
    subset["baseline"]["inputs"] = ["hour", "position"]
    assert spec_hash(spec_from_mapping(subset)) != spec_hash(spec)
    assert spec_hash(spec_from_mapping(with_text)) != spec_hash(spec)


def test_a_model_reads_the_subset_its_inputs_name_in_spec_order(with_text) -> None:
    with_text["baseline"]["inputs"] = ["ad_text", "position"]  # order here does not matter
    spec = spec_from_mapping(with_text)
    assert [i.name for i in spec.inputs_of(spec.baseline)] == ["position", "ad_text"]
    assert spec.inputs_of(spec.model) == spec.model_input_schema()
    assert len(spec.model_input_schema()) == len(spec.model_inputs())


def test_unknown_model_inputs_and_drift_outside_the_model_are_named(with_text) -> None:
    bad = copy.deepcopy(with_text)
    bad["baseline"]["inputs"] = ["ad_text", "clicked"]
    assert "baseline.inputs: ['clicked'] are not model inputs" in _error(bad)
    with_text["model"]["inputs"] = ["ad_text", "position"]
    with_text["drift"]["columns"] = ["ad_text", "hour"]
    assert "drift.columns: 'hour' is not a model input (of model.inputs)" in _error(with_text)


# --- training, export and parity ------------------------------------------------------------------

WORDS = ["cheap", "Pills", "win", "cash", "shoes", "garden", "loan", "w1n", "x", "a", "deal"]
ODD = ["café don't", "naïve_über", "ok-ok!!", "", "  ", "A b C", "fr33 $$$ 100%"]


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Texts with case, punctuation, non-ASCII and empty values, a number and a category."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(0, 8))) for _ in range(n)]
    texts[: len(ODD)] = ODD
    frame = pd.DataFrame(
        {
            "ad_text": texts,
            "device": rng.choice(["ios", "android", "desktop"], n),
            "hour": rng.integers(0, 24, n).astype(np.float32),
        }
    )
    label = np.array(["cash" in t or "Pills" in t for t in texts]) ^ (rng.random(n) < 0.1)
    return frame, label.astype(np.int64)


INPUTS = [
    ModelInput(name="device", dtype="string", categories=["ios", "android", "desktop"]),
    ModelInput(name="hour", dtype="float32"),
    ModelInput(name="ad_text", dtype="string", text=TextSpec(max_features=20, ngram_max=2, min_df=2)),
]


@pytest.mark.parametrize("family", ["sklearn_logistic", "lightgbm"])
def test_tfidf_pipelines_learn_the_text_and_their_onnx_graph_matches(family: str) -> None:
    frame, y = _frame(1500, seed=0)
    params = {"n_estimators": 30, "min_child_samples": 5} if family == "lightgbm" else {}
    pipeline = get_family(family).build(INPUTS, params, 7, 1).fit(model_frame(INPUTS, frame), y)
    vectorizer = pipeline.named_steps["pre"].named_transformers_["text_ad_text"]
    assert "cash" in vectorizer.vocabulary_
    assert "Pills" in vectorizer.vocabulary_
    assert "x" in vectorizer.vocabulary_  # one-character tokens count too
    holdout, y_holdout = _frame(500, seed=1)
    scores = pipeline.predict_proba(model_frame(INPUTS, holdout))[:, 1]
    assert scores[y_holdout == 1].mean() > scores[y_holdout == 0].mean() + 0.3
    report = parity_report(
        to_onnx(pipeline, INPUTS), pipeline, INPUTS, model_frame(INPUTS, holdout), tolerance=1e-5
    )
    assert report["passed"], report
    assert report["max_abs_diff"] < 1e-6


def test_scikit_learns_default_token_pattern_would_break_parity() -> None:
    """Why the token pattern is fixed: ONNX Runtime splits ``(?u)\\b\\w\\w+\\b`` differently on
    non-ASCII and underscores (measured with skl2onnx 1.20, onnxruntime 1.31)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer

    from mlsd.export.onnx_graph import session

    docs = np.array([*ODD, "cheap deal", "w1n cash"], dtype=object)
    vectorizer = TfidfVectorizer(lowercase=False).fit(docs)
    graph = convert_sklearn(vectorizer, initial_types=[("t", StringTensorType([None, 1]))], target_opset=17)
    (onnx_out,) = session(graph).run(None, {"t": docs.reshape(-1, 1)})
    assert np.abs(onnx_out - vectorizer.transform(docs).toarray()).max() > 0.1


def test_text_models_fit_on_one_ray_worker() -> None:
    """A vocabulary fitted per data shard would differ between workers."""
    from mlsd.training.ray_fit import fit_workers

    lightgbm = get_family("lightgbm")
    assert fit_workers(lightgbm, INPUTS[:2], 2) == 2
    assert fit_workers(lightgbm, INPUTS, 2) == 1
    assert fit_workers(get_family("sklearn_logistic"), INPUTS[:2], 2) == 1


# --- serving -------------------------------------------------------------------------------------


def test_a_text_request_field_takes_any_string_up_to_its_length_and_names_the_field(with_text) -> None:
    request = api_models(spec_from_mapping(with_text), max_batch=2).request
    good = {"user_id": 1, "ad_id": 2, "category": "auto", "position": 1, "hour": 3}
    assert request.model_validate({**good, "ad_text": ""}).ad_text == ""  # type: ignore[attr-defined]
    assert request.model_validate({**good, "ad_text": "x" * 120})
    for wrong in (["cheap", "pills"], 42, None, "x" * 121, {"text": "a"}):
        with pytest.raises(ValidationError) as info:
            request.model_validate_json(json.dumps({**good, "ad_text": wrong}))
        assert [e["loc"] for e in info.value.errors()] == [("ad_text",)], wrong


# --- drift ---------------------------------------------------------------------------------------


def test_text_drift_is_measured_on_token_counts() -> None:
    rng = np.random.default_rng(0)

    def texts(n: int, words: tuple[int, int]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "ad_text": [" ".join(rng.choice(WORDS, rng.integers(*words))) for _ in range(n)],
                "score": rng.beta(2, 60, n),
            }
        )

    kinds = column_kinds(["ad_text"], categorical=set(), text={"ad_text"})
    assert kinds == {"ad_text": "text"}
    counted = token_counts(pd.DataFrame({"ad_text": ["fr33 cash!!", "", "naïve_über a"]}), kinds)
    assert counted["ad_text"].tolist() == [2.0, 0.0, 4.0]  # na, ve, ber, a: only [A-Za-z0-9]+ runs
    params, reference = DriftParams(), texts(3000, (3, 10))
    for current, drifted in ((texts(2000, (3, 10)), False), (texts(2000, (10, 25)), True)):
        summary = summarize(drift_report(reference, current, kinds, params), kinds, params, 0.3, reference)
        assert summary["columns"]["ad_text"]["drifted"] is drifted
        assert summary["columns"]["ad_text"]["kind"] == "text"


# --- the design document -------------------------------------------------------------------------


def test_the_design_document_lists_text_inputs_with_their_tfidf(with_text) -> None:
    with_text["baseline"]["inputs"] = ["ad_text"]
    text = "\n".join(model_section(ProblemSpec.model_validate(with_text), {}))
    assert "text: TF-IDF of tokens (top 50 terms, min_df 1)" in text
    assert "reading only `ad_text`" in text
    assert "TF-IDF weighted inside the graph" in text
    serving = "\n".join(serving_section(ProblemSpec.model_validate(with_text), {}))
    assert "| `ad_text` | request context | string free text, at most 120 characters |" in serving
