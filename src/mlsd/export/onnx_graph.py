"""Turn a fitted scikit-learn pipeline (preprocessing + model) into one ONNX graph.

The graph has one input per model input, in the spec's order: numbers as float32 ``[N, 1]``,
strings as string ``[N, 1]``. Its ``probabilities`` output is ``[N, 2]`` float32 (no ZipMap), so
the serving path is a dict of arrays in, one array out, with no pandas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from mlsd.errors import ExportError
from mlsd.spec import ModelInput

SCORE_OUTPUT = "probabilities"  # [N, 2]; column 1 is P(label = 1)
OPSET = {"": 17, "ai.onnx.ml": 3}
_ONNX_TYPES = {1: "float32", 7: "int64", 8: "string", 11: "float64"}


@cache
def _register_converters() -> None:
    """Teach skl2onnx about LightGBM (onnxmltools' converter), once per process."""
    from lightgbm import LGBMClassifier
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


def _split_thresholds(booster: Any) -> dict[tuple[int, int], list[float]]:
    """Every numeric split threshold of a LightGBM booster (doubles), by (tree, feature)."""
    out: dict[tuple[int, int], list[float]] = {}

    def walk(tree: int, node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        if node.get("decision_type") == "<=":
            out.setdefault((tree, int(node["split_feature"])), []).append(float(node["threshold"]))
        walk(tree, node["left_child"])
        walk(tree, node["right_child"])

    for tree, info in enumerate(booster.dump_model()["tree_info"]):
        walk(tree, info["tree_structure"])
    return out


def round_thresholds_down(model: Any, booster: Any) -> int:
    """Make the graph's tree splits decide float32 inputs as LightGBM does; returns how many moved.

    LightGBM splits on ``x <= t`` with ``t`` a double; the converter stores ``t`` as the nearest
    float32, which can lie above ``t``, so a float32 input in ``(t, float32(t)]`` goes left in the
    graph and right natively (features at large magnitude with fine steps, like amounts in
    dollars and cents, hit this). Each threshold the conversion rounded up goes one float32 step
    down: for a float32 ``x``, ``x <= t`` then holds exactly when the graph's test does. A value
    that two splits of one tree and feature share, one rounded up and one exact, is left alone.
    """
    thresholds = _split_thresholds(booster)
    moved = 0
    for node in model.graph.node:
        if node.op_type not in ("TreeEnsembleClassifier", "TreeEnsembleRegressor"):
            continue
        attrs = {a.name: a for a in node.attribute}
        values = attrs["nodes_values"].floats
        for i, (tree, feature, mode) in enumerate(
            zip(
                attrs["nodes_treeids"].ints,
                attrs["nodes_featureids"].ints,
                attrs["nodes_modes"].strings,
                strict=True,
            )
        ):
            if mode != b"BRANCH_LEQ":
                continue
            stored = np.float32(values[i])
            # in float64: NumPy 2 would compare a Python float with a float32 in float32
            sources = {
                t < float(stored) for t in thresholds.get((tree, feature), []) if np.float32(t) == stored
            }
            if sources == {True}:
                values[i] = float(np.nextafter(stored, np.float32(-np.inf)))
                moved += 1
    return moved


def to_onnx(
    pipeline: Any, inputs: list[ModelInput], metadata: dict[str, str] | None = None, name: str = "mlsd"
) -> Any:
    """The ONNX ``ModelProto`` of ``pipeline``, with ``metadata`` stored as metadata_props.

    The graph is named ``name`` (skl2onnx would pick a random one) and its opsets are sorted, so
    the same fitted pipeline always gives the same bytes, whatever ``PYTHONHASHSEED`` is.

    Raises:
        ExportError: the pipeline has a step skl2onnx cannot convert.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _register_converters()
    types = [
        (i.name, StringTensorType([None, 1]) if i.dtype == "string" else FloatTensorType([None, 1]))
        for i in inputs
    ]
    final = pipeline.steps[-1][1]
    try:
        model = convert_sklearn(
            pipeline,
            initial_types=types,
            options={id(final): {"zipmap": False}},
            target_opset=OPSET,
            name=name,
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/NotImplementedError types
        raise ExportError(f"cannot export {type(final).__name__} to ONNX: {exc}") from exc
    if hasattr(final, "booster_"):  # LightGBM: decide float32 inputs at its double thresholds
        round_thresholds_down(model, final.booster_)
    sort_opsets(model)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def sort_opsets(model: Any) -> None:
    """Put ``opset_import`` in domain order: skl2onnx collects it from a set, so its order (and the
    serialized bytes) would otherwise follow the interpreter's string hash seed."""
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)


def onnx_feeds(inputs: list[ModelInput], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The input arrays of the graph for the rows of ``frame`` (a model frame)."""
    feeds = {}
    for item in inputs:
        column = frame[item.name].to_numpy()
        dtype = object if item.dtype == "string" else np.float32
        feeds[item.name] = column.astype(dtype).reshape(-1, 1)
    return feeds


def session(model: Any, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session over a ModelProto or serialized bytes.

    ``threads`` > 0 caps ORT's intra- and inter-op pools: a server scoring one row at a time is
    faster on one thread than waking a pool per call; 0 lets ORT use every core (batch scoring).
    """
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def score_column(values: Any) -> np.ndarray:
    """The score per row from a score output: column 1 (P(label = 1)) of a classifier's ``[N, 2]``
    probabilities, the only column of an ``[N, 1]`` score (an uplift graph's effect)."""
    array = np.asarray(values)
    return array[:, 1] if array.ndim == 2 and array.shape[1] == 2 else array.reshape(len(array), -1)[:, 0]


def onnx_scores(sess: Any, feeds: dict[str, np.ndarray], output: str = SCORE_OUTPUT) -> np.ndarray:
    """The score of every row from the graph's ``output`` (default: a classifier's P(label = 1))."""
    (values,) = sess.run([output], feeds)
    return score_column(values)


def signature(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (``"N"`` for the batch dimension) of the graph's inputs and outputs."""

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            tensor = v.type.tensor_type
            dims = [d.dim_value or d.dim_param or "N" for d in tensor.shape.dim]
            out.append({"name": v.name, "dtype": _ONNX_TYPES.get(tensor.elem_type, "other"), "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
