"""Export: both families to one ONNX graph with the spec's signature, and the parity gate on it."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline

from mlsd.errors import ExportError
from mlsd.export import (
    SCORE_OUTPUT,
    onnx_feeds,
    onnx_scores,
    parity_failure,
    parity_report,
    session,
    signature,
    to_onnx,
)
from mlsd.spec import ModelInput, load_spec
from mlsd.training import get_family, model_frame
from tests.synthetic import model_input_rows

SPEC_PATH = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"
INPUTS = load_spec(SPEC_PATH).model_input_schema()
TOLERANCE = 1e-5
FAMILY_PARAMS = {
    "lightgbm": {"n_estimators": 60, "num_leaves": 15, "min_child_samples": 20},
    "sklearn_logistic": {"C": 1.0},
}


def synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A model frame of the spec's inputs and labels drawn from a known logistic probability."""
    rng = np.random.default_rng(seed)
    frame, truth = model_input_rows(INPUTS, n, rng)
    y = (rng.random(n) < truth).astype(np.int64)
    return model_frame(INPUTS, frame), y


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[Any, onnx.ModelProto]]:
    x, y = synthetic(3000, seed=0)
    out = {}
    for name, params in FAMILY_PARAMS.items():
        pipeline = get_family(name).build(INPUTS, params, 0, 1).fit(x, y)
        out[name] = (pipeline, to_onnx(pipeline, INPUTS, {"family": name, "run": "r1"}))
    return out


_EXPORT_SCRIPT = """
import hashlib, pickle, sys
from mlsd.export import to_onnx
from mlsd.spec import load_spec
pipeline = pickle.load(open(sys.argv[1], "rb"))
inputs = load_spec(sys.argv[2]).model_input_schema()
print(hashlib.sha256(to_onnx(pipeline, inputs, {"run": "r1"}).SerializeToString()).hexdigest())
"""


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_export_bytes_do_not_depend_on_the_hash_seed(
    family: str, fitted: dict[str, Any], tmp_path: Path
) -> None:
    """Retraining must give byte-identical graphs; skl2onnx gathers opsets in a set, whose order
    follows PYTHONHASHSEED, so each export runs in a process with a different seed."""
    pickled = tmp_path / "pipeline.pkl"
    pickled.write_bytes(pickle.dumps(fitted[family][0]))
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _EXPORT_SCRIPT, str(pickled), str(SPEC_PATH)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    local = hashlib.sha256(to_onnx(fitted[family][0], INPUTS, {"run": "r1"}).SerializeToString())
    assert digests == {local.hexdigest()}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Rows the models never saw, for parity."""
    return synthetic(2500, seed=1)[0]


def renamed(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """A copy of ``model`` with graph inputs renamed, in graph.input and in every node's inputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        value.name = mapping.get(value.name, value.name)
    for node in copy.graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = mapping.get(name, name)
    return copy


FAMILIES = pytest.mark.parametrize("family", list(FAMILY_PARAMS))


@FAMILIES
def test_graph_inputs_are_the_spec_model_inputs(family: str, fitted: dict[str, Any]) -> None:
    _, model = fitted[family]
    sig = signature(model)
    assert sig["inputs"] == [
        {"name": i.name, "dtype": "float32" if i.dtype == "float32" else "string", "shape": ["N", 1]}
        for i in INPUTS
    ]
    outputs = {o["name"]: o for o in sig["outputs"]}
    assert outputs[SCORE_OUTPUT] == {"name": SCORE_OUTPUT, "dtype": "float32", "shape": ["N", 2]}
    assert {p.key: p.value for p in model.metadata_props} == {"family": family, "run": "r1"}
    onnx.checker.check_model(model)
    # no ZipMap: the serving output is a plain tensor
    assert "ZipMap" not in {n.op_type for n in model.graph.node}


def test_onnx_feeds_are_float32_and_string_columns(rows: pd.DataFrame) -> None:
    feeds = onnx_feeds(INPUTS, rows.iloc[:10])
    assert list(feeds) == [i.name for i in INPUTS]
    for item in INPUTS:
        array = feeds[item.name]
        assert array.shape == (10, 1)
        assert array.dtype == (object if item.dtype == "string" else np.float32)
        assert list(array[:, 0]) == list(rows[item.name].iloc[:10])


@FAMILIES
def test_parity_passes_on_unseen_rows(family: str, fitted: dict[str, Any], rows: pd.DataFrame) -> None:
    pipeline, model = fitted[family]
    report = parity_report(model, pipeline, INPUTS, rows, tolerance=TOLERANCE)

    assert report["passed"] is True, report
    assert report["rows"] == 2500
    assert report["max_abs_diff"] <= TOLERANCE
    assert report["mean_abs_diff"] <= report["max_abs_diff"]
    assert report["rows_over"] == 0
    assert parity_failure(report) is None
    worst = report["worst_row"]
    native = pipeline.predict_proba(rows)[:, 1]
    assert worst["native"] == pytest.approx(native[worst["index"]], abs=0)
    # the graph really scores: its probabilities spread like the native model's
    onnx_p = onnx_scores(session(model), onnx_feeds(INPUTS, rows))
    assert onnx_p.std() > 0.1
    np.testing.assert_allclose(onnx_p, native, atol=TOLERANCE)


@FAMILIES
def test_parity_holds_for_serialized_bytes_and_unseen_categories(
    family: str, fitted: dict[str, Any], rows: pd.DataFrame
) -> None:
    pipeline, model = fitted[family]
    unseen = rows.copy()
    unseen.loc[unseen.index[::3], "country"] = "FR"
    unseen.loc[unseen.index[::5], "category"] = "toys"
    report = parity_report(model.SerializeToString(), pipeline, INPUTS, unseen, tolerance=TOLERANCE)
    assert report["passed"] is True, report


@FAMILIES
def test_parity_fails_with_numbers_when_two_inputs_are_swapped(
    family: str, fitted: dict[str, Any], rows: pd.DataFrame
) -> None:
    pipeline, model = fitted[family]
    swapped = renamed(model, {"user_ctr_7d": "position", "position": "user_ctr_7d"})
    onnx.checker.check_model(swapped)

    report = parity_report(swapped, pipeline, INPUTS, rows, tolerance=TOLERANCE)

    assert report["passed"] is False
    assert "error" not in report
    assert report["rows_over"] > 0.5 * len(rows)
    assert report["max_abs_diff"] > 0.1
    worst = report["worst_row"]
    assert abs(worst["native"] - worst["onnx"]) == pytest.approx(report["max_abs_diff"])
    line = parity_failure(report)
    assert line is not None
    assert line.startswith("parity:")
    assert f"> {TOLERANCE:g}" in line
    assert f"on {report['rows_over']} of 2500 rows" in line
    assert f"worst row {worst['index']}" in line


@FAMILIES
def test_graph_that_does_not_run_fails_parity_with_its_error(
    family: str, fitted: dict[str, Any], rows: pd.DataFrame
) -> None:
    pipeline, model = fitted[family]
    broken = renamed(model, {"hour": "hour_of_day"})

    report = parity_report(broken, pipeline, INPUTS, rows, tolerance=TOLERANCE)

    assert report["passed"] is False
    assert "hour_of_day" in report["error"]
    assert report["rows"] == 2500
    line = parity_failure(report)
    assert line is not None
    assert line.startswith("parity: the ONNX graph does not run on the model inputs")


def test_bytes_that_are_not_a_graph_fail_parity(fitted: dict[str, Any], rows: pd.DataFrame) -> None:
    pipeline, _ = fitted["sklearn_logistic"]
    report = parity_report(b"not an onnx graph", pipeline, INPUTS, rows, tolerance=TOLERANCE)
    assert report["passed"] is False
    assert report["error"]
    assert "does not run" in (parity_failure(report) or "")


class _Custom(ClassifierMixin, BaseEstimator):
    """A classifier skl2onnx has no converter for."""

    def fit(self, x: Any, y: Any) -> _Custom:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.full((len(x), 2), 0.5)


def test_unconvertible_step_is_an_export_error(rows: pd.DataFrame) -> None:
    pipeline = get_family("sklearn_logistic").build(INPUTS, {}, 0, 1)
    custom = Pipeline([("pre", pipeline.named_steps["pre"]), ("model", _Custom())])
    custom.fit(rows, np.arange(len(rows)) % 2)
    with pytest.raises(ExportError, match=r"cannot export _Custom to ONNX"):
        to_onnx(custom, INPUTS)


def test_lightgbm_splits_decide_float32_inputs_as_lightgbm_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dollars and cents near 100,000: a float32 step is 0.0078, so LightGBM's double thresholds
    # (just over the midpoint of two float32 values) round up to the next value, which the graph
    # would then send left where LightGBM sends it right.
    from mlsd.spec import ModelInput

    rng = np.random.default_rng(0)
    amount = (100_000 + rng.integers(0, 3000, 4000) * 0.01).astype(np.float32)
    noise = rng.normal(size=4000).astype(np.float32)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(amount - 100_015.0) * 0.3))).astype(int)
    inputs = [ModelInput(name="amount", dtype="float32"), ModelInput(name="noise", dtype="float32")]
    frame = pd.DataFrame({"amount": amount, "noise": noise})
    pipeline = get_family("lightgbm").build(inputs, {"n_estimators": 30, "min_child_samples": 5}, 0, 1)
    pipeline.fit(frame, y)
    report = parity_report(to_onnx(pipeline, inputs), pipeline, inputs, frame, tolerance=TOLERANCE)
    assert report["passed"], report
    assert report["max_abs_diff"] < 1e-6
    # The converter alone, thresholds rounded to nearest, sends some of these rows the other way.
    monkeypatch.setattr("mlsd.export.onnx_graph.round_thresholds_down", lambda model, booster: 0)
    plain = parity_report(to_onnx(pipeline, inputs), pipeline, inputs, frame, tolerance=TOLERANCE)
    assert not plain["passed"]
    assert plain["rows_over"] > 10


# --- the parity gate at its edge -----------------------------------------------------------------
# A tiny hand-built graph passes its float32 input ``x`` through; a native model gives the same
# scores except where a test shifts one of them. Scores of 0.25 / 0.5 / 0.75 are exact in float32,
# so a shift of ``tolerance * (1 +- 1e-3)`` is the measured difference to ~1e-16.

EDGE_INPUTS = [ModelInput(name="x", dtype="float32")]
EDGE_FRAME = pd.DataFrame({"x": np.array([0.25, 0.5, 0.75, 0.5], dtype=np.float32)})
JUST_OVER, JUST_UNDER = 1 + 1e-3, 1 - 1e-3


def _pass_through_graph(output: str, copies: int) -> onnx.ModelProto:
    """A graph whose ``output`` is ``copies`` columns of its input ``x`` ([N, 1] float32)."""
    from onnx import TensorProto, helper

    node = helper.make_node("Concat", ["x"] * copies, [output], axis=1)
    graph = helper.make_graph(
        [node],
        "pass_through",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None, copies])],
    )
    # IR version 8 (ONNX 1.10): any ONNX Runtime of the lock runs it, whatever onnx writes by default.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _ShiftedClassifier:
    """A native binary model: P(label = 1) is the input plus ``shift`` (per row)."""

    def __init__(self, shift: np.ndarray) -> None:
        self.shift = shift

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        p = frame["x"].to_numpy(np.float64) + self.shift
        return np.column_stack([1 - p, p])


class _ShiftedMultilabel:
    """A native multi-label model: every class scores the input, plus ``shift`` ([N, classes])."""

    def __init__(self, shift: np.ndarray) -> None:
        self.shift = shift

    def predict_score(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["x"].to_numpy(np.float64)[:, None] + self.shift


def _one_off(shape: tuple[int, ...], at: tuple[int, ...], by: float) -> np.ndarray:
    shift = np.zeros(shape)
    shift[at] = by
    return shift


@pytest.mark.parametrize(("factor", "passed"), [(JUST_OVER, False), (JUST_UNDER, True)])
def test_binary_parity_fails_for_one_row_just_over_the_tolerance_and_passes_just_under(
    factor: float, passed: bool
) -> None:
    """One row of four off by just over the tolerance fails the gate: the gate is on the largest
    difference, so the three exact rows cannot average it away."""
    native = _ShiftedClassifier(_one_off((4,), (2,), TOLERANCE * factor))
    report = parity_report(
        _pass_through_graph(SCORE_OUTPUT, 2), native, EDGE_INPUTS, EDGE_FRAME, tolerance=TOLERANCE
    )

    assert report["passed"] is passed
    assert report["max_abs_diff"] == pytest.approx(TOLERANCE * factor, rel=1e-9)
    assert report["mean_abs_diff"] == pytest.approx(TOLERANCE * factor / 4, rel=1e-9)
    assert report["rows_over"] == (0 if passed else 1)
    assert report["worst_row"] == {
        "index": 2,
        "native": pytest.approx(0.75 + TOLERANCE * factor),
        "onnx": 0.75,
    }
    assert "per_label" not in report
    assert (parity_failure(report) is None) is passed


def test_a_difference_equal_to_the_tolerance_still_passes() -> None:
    """``tolerance`` is the largest difference that passes (2**-17 and 0.5 + 2**-17 are exact)."""
    native = _ShiftedClassifier(_one_off((4,), (1,), 2.0**-17))
    report = parity_report(
        _pass_through_graph(SCORE_OUTPUT, 2), native, EDGE_INPUTS, EDGE_FRAME, tolerance=2.0**-17
    )
    assert report["max_abs_diff"] == 2.0**-17
    assert report["passed"] is True
    assert report["rows_over"] == 0


@pytest.mark.parametrize(("factor", "passed"), [(JUST_OVER, False), (JUST_UNDER, True)])
def test_multilabel_parity_fails_for_one_column_of_one_row_just_over_the_tolerance(
    factor: float, passed: bool
) -> None:
    """One class of one row off: the per-label maxima name that class, the worst row is that row and
    its scores are that column's."""
    classes = ["spam", "scam", "nsfw"]
    native = _ShiftedMultilabel(_one_off((4, 3), (3, 1), -TOLERANCE * factor))
    graph = _pass_through_graph("labels", 3)
    report = parity_report(
        graph, native, EDGE_INPUTS, EDGE_FRAME, tolerance=TOLERANCE, output="labels", classes=classes
    )

    assert report["passed"] is passed
    assert report["per_label"] == {
        "spam": 0.0,
        "scam": pytest.approx(TOLERANCE * factor, rel=1e-9),
        "nsfw": 0.0,
    }
    assert report["rows_over"] == (0 if passed else 1)
    assert report["worst_row"] == {"index": 3, "native": pytest.approx(0.5 - TOLERANCE * factor), "onnx": 0.5}
    assert report["mean_abs_diff"] == pytest.approx(TOLERANCE * factor / 4, rel=1e-9)


def test_multilabel_worst_row_reports_the_column_that_differs_most() -> None:
    """Row 0 differs in its last class only: the worst row's scores are that class's, not the
    first class's (0.25 in both)."""
    native = _ShiftedMultilabel(_one_off((4, 3), (0, 2), 0.5))
    report = parity_report(
        _pass_through_graph("labels", 3),
        native,
        EDGE_INPUTS,
        EDGE_FRAME,
        tolerance=TOLERANCE,
        output="labels",
        classes=["a", "b", "c"],
    )
    assert report["worst_row"] == {"index": 0, "native": 0.75, "onnx": 0.25}
    assert report["max_abs_diff"] == 0.5


@pytest.mark.parametrize(("factor", "passed"), [(JUST_OVER, False), (JUST_UNDER, True)])
def test_retrieval_parity_fails_for_one_item_score_just_over_the_tolerance(
    factor: float, passed: bool
) -> None:
    """Same items in the same order; one score of one user's list off by just over the tolerance."""
    from mlsd.export.retrieval_graph import compare_ranked

    items = np.array([[7, 3, 9, 1], [2, 4, 6, 8], [5, 1, 3, 2]])
    scores = np.array([[0.9, 0.7, 0.5, 0.25], [0.8, 0.6, 0.4, 0.2], [0.75, 0.5, 0.3, 0.1]])
    onnx_scores_ = scores[:, :3].copy()
    onnx_scores_[1, 2] += TOLERANCE * factor
    report = compare_ranked((items, scores), (items[:, :3], onnx_scores_), tolerance=TOLERANCE)

    assert report["passed"] is passed
    assert report["item_mismatches"] == 0
    assert report["rows_over"] == (0 if passed else 1)
    assert report["max_abs_diff"] == pytest.approx(TOLERANCE * factor, rel=1e-6)
    assert report["worst_row"]["index"] == 1


def test_native_scores_prefer_predict_score_over_the_positive_class_probability() -> None:
    """An uplift model's score is its effect (``predict_score``); a classifier's is column 1."""
    from mlsd.export import native_scores

    class Both(_ShiftedClassifier):
        def predict_score(self, frame: pd.DataFrame) -> np.ndarray:
            return np.full(len(frame), -1.0)

    np.testing.assert_array_equal(native_scores(Both(np.zeros(4)), EDGE_FRAME), [-1.0] * 4)
    np.testing.assert_array_equal(
        native_scores(_ShiftedClassifier(np.zeros(4)), EDGE_FRAME), [0.25, 0.5, 0.75, 0.5]
    )
    assert native_scores(_ShiftedClassifier(np.zeros(4)), EDGE_FRAME).dtype == np.float64


def test_a_graph_that_fails_to_run_reports_its_rows_and_tolerance() -> None:
    report = parity_report(
        b"not an onnx graph", _ShiftedClassifier(np.zeros(4)), EDGE_INPUTS, EDGE_FRAME, tolerance=TOLERANCE
    )
    assert report == {"rows": 4, "tolerance": TOLERANCE, "passed": False, "error": ANY}
    assert (
        parity_failure(report)
        == f"parity: the ONNX graph does not run on the model inputs: {report['error']}"
    )


def test_the_failure_line_quotes_every_number_of_the_report() -> None:
    report = {
        "rows": 2500,
        "tolerance": 1e-5,
        "max_abs_diff": 0.0123456,
        "rows_over": 3,
        "worst_row": {"index": 17, "native": 0.1234567, "onnx": 0.1111111},
        "passed": False,
    }
    assert parity_failure(report) == (
        "parity: max |onnx - native| = 0.0123 > 1e-05 on 3 of 2500 rows (worst row 17: "
        "native 0.123457, onnx 0.111111)"
    )


def test_native_scores_are_float64_whatever_the_model_returns() -> None:
    from mlsd.export import native_scores

    class Float32(_ShiftedClassifier):
        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            return super().predict_proba(frame).astype(np.float32)

    class Float32Score(_ShiftedClassifier):
        def predict_score(self, frame: pd.DataFrame) -> np.ndarray:
            return frame["x"].to_numpy(np.float32)

    assert native_scores(Float32(np.zeros(4)), EDGE_FRAME).dtype == np.float64
    assert native_scores(Float32Score(np.zeros(4)), EDGE_FRAME).dtype == np.float64


def test_parity_reads_the_named_output_of_a_graph_with_several() -> None:
    """A score output other than the classifier's (an uplift graph's ``[N, 1]`` effect, listed
    second): parity compares that output, not the first one."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Neg", ["x"], ["other"]),
        helper.make_node("Identity", ["x"], ["effect"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor_value_info("other", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("effect", TensorProto.FLOAT, [None, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    class Effect(_ShiftedClassifier):
        def predict_score(self, frame: pd.DataFrame) -> np.ndarray:
            return frame["x"].to_numpy(np.float64)

    native = Effect(np.zeros(4))
    single = parity_report(model, native, EDGE_INPUTS, EDGE_FRAME, tolerance=TOLERANCE, output="effect")
    labels = parity_report(
        model,
        _ShiftedMultilabel(np.zeros((4, 1))),
        EDGE_INPUTS,
        EDGE_FRAME,
        tolerance=TOLERANCE,
        output="effect",
        classes=["effect"],
    )
    assert (single["passed"], single["max_abs_diff"]) == (True, 0.0)
    assert (labels["passed"], labels["per_label"]) == (True, {"effect": 0.0})
