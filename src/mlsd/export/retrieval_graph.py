"""A factor recommender as one ONNX graph: user id -> factor row -> scores of every item -> top k.

    user_id int64 [N, 1]
      -> ai.onnx.ml LabelEncoder (id -> row; unknown ids -> the cold-start row)
      -> Gather(user factors + cold row)  [N, f]
      -> MatMul(item factors^T)           [N, items]
      -> TopK(k)                          scores float32 [N, k], positions int64 [N, k]
      -> Gather(item ids)                 items int64 [N, k]

The model is only arrays (ids and factors), so the graph is written with onnx.helper directly.
The parity gate compares ONNX Runtime's top k with the native model's for the same users.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mlsd.export.onnx_graph import OPSET, session

ITEMS_OUTPUT, SCORES_OUTPUT = "items", "scores"
RETRIEVAL_OUTPUTS = (ITEMS_OUTPUT, SCORES_OUTPUT)


class RankedLists(Protocol):
    """What the parity gate compares a graph with: anything that ranks items for user ids."""

    def recommend(self, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class FactorTables(Protocol):
    """What the graph is built from (mlsd.training.factors.FactorModel has it once fitted)."""

    user_ids_: np.ndarray
    user_factors_: np.ndarray
    item_ids_: np.ndarray
    item_factors_: np.ndarray
    cold_user_: np.ndarray

    def recommend(self, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def factor_stage(model: FactorTables, input_name: str, exact: bool = False) -> tuple[list[Any], list[Any]]:
    """Initializers and nodes from the ``input_name`` ids to ``row`` (each id's factor row, the
    cold row for unknown ids) and ``all_scores`` ``[N, items]`` float32 (every item's score).

    ``exact`` multiplies in float64 and rounds the products to float32 (what
    ``FactorModel.exact_scores`` does natively): float32 MatMuls sum in a different order than numpy's,
    and a score a tree splits on must be the same number on both sides.
    """
    from onnx import TensorProto, helper, numpy_helper

    dtype = np.float64 if exact else np.float32
    table = np.vstack([model.user_factors_, model.cold_user_]).astype(dtype)
    initializers = [
        numpy_helper.from_array(table, "user_table"),
        numpy_helper.from_array(np.ascontiguousarray(model.item_factors_.T, dtype=dtype), "item_table_t"),
        numpy_helper.from_array(model.item_ids_.astype(np.int64), "item_ids"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node(
            "LabelEncoder",
            [input_name],
            ["row_2d"],
            domain="ai.onnx.ml",
            keys_int64s=model.user_ids_.astype(np.int64).tolist(),
            values_int64s=list(range(len(model.user_ids_))),
            default_int64=len(model.user_ids_),
        ),
        helper.make_node("Reshape", ["row_2d", "flat"], ["row"]),
        helper.make_node("Gather", ["user_table", "row"], ["user_vec"], axis=0),
        helper.make_node(
            "MatMul", ["user_vec", "item_table_t"], ["all_scores_raw" if exact else "all_scores"]
        ),
    ]
    if exact:
        nodes.append(helper.make_node("Cast", ["all_scores_raw"], ["all_scores"], to=TensorProto.FLOAT))
    return initializers, nodes


def ranked_graph(
    initializers: list[Any],
    nodes: list[Any],
    input_name: str,
    k: int,
    metadata: dict[str, str] | None,
    name: str,
) -> Any:
    """The ``ModelProto`` of ``nodes``: ``input_name`` ids ``[N, 1]`` in, ``items`` and ``scores``
    ``[N, k]`` out."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.INT64, ["N", 1])],
        [
            helper.make_tensor_value_info(ITEMS_OUTPUT, TensorProto.INT64, ["N", k]),
            helper.make_tensor_value_info(SCORES_OUTPUT, TensorProto.FLOAT, ["N", k]),
        ],
        initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in sorted(OPSET.items())],
        producer_name="mlsd",
    )
    onnx_model.ir_version = 8  # what onnxruntime of this stack reads for opset 17
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=value)
    return onnx_model


def retrieval_to_onnx(
    model: FactorTables,
    k: int,
    input_name: str = "user_id",
    metadata: dict[str, str] | None = None,
    name: str = "mlsd",
) -> Any:
    """The ``ModelProto`` ranking ``min(k, items)`` items for each ``input_name`` id."""
    from onnx import helper, numpy_helper

    k = min(k, len(model.item_ids_))
    initializers, nodes = factor_stage(model, input_name)
    initializers.append(numpy_helper.from_array(np.array([k], dtype=np.int64), "k"))
    nodes += [
        helper.make_node(
            "TopK", ["all_scores", "k"], [SCORES_OUTPUT, "positions"], axis=1, largest=1, sorted=1
        ),
        helper.make_node("Gather", ["item_ids", "positions"], [ITEMS_OUTPUT], axis=0),
    ]
    return ranked_graph(initializers, nodes, input_name, k, metadata, name)


def retrieval_feeds(user_ids: np.ndarray, input_name: str = "user_id") -> dict[str, np.ndarray]:
    """The graph's input for a list of user ids."""
    return {input_name: np.asarray(user_ids, dtype=np.int64).reshape(-1, 1)}


def retrieval_parity(
    onnx_model: Any, model: RankedLists, user_ids: np.ndarray, k: int, *, tolerance: float
) -> dict[str, Any]:
    """ONNX Runtime's top k against ``model.recommend`` for every user id.

    Items must agree position by position except where the native scores tie (an exact tie may
    be ordered either way); scores must agree within ``tolerance``. The report has the binary
    parity report's keys (``rows``, ``max_abs_diff``, ``rows_over``, ``worst_row``, ``passed``) plus
    ``item_mismatches``, so the same approval step reads both.
    """
    native = model.recommend(user_ids, k + 1)  # one more: see compare_ranked
    try:
        items, scores = session(onnx_model).run(list(RETRIEVAL_OUTPUTS), retrieval_feeds(user_ids))
    except Exception as exc:  # ORT raises its own types for a bad graph
        return {"rows": len(user_ids), "tolerance": tolerance, "passed": False, "error": str(exc)}
    return compare_ranked(native, (items, scores), tolerance=tolerance)


def compare_ranked(
    native: tuple[np.ndarray, np.ndarray], onnx: tuple[np.ndarray, np.ndarray], *, tolerance: float
) -> dict[str, Any]:
    """The parity report of two ``(items, scores)`` top-k lists of the same rows (see
    :func:`retrieval_parity`). ``native`` may hold one item more per row than ``onnx`` (the first
    one left out), so an item tied with it counts as a tie too."""
    items, scores = np.asarray(onnx[0]), np.asarray(onnx[1])
    k = min(items.shape[1], native[0].shape[1])
    items, scores = items[:, :k], scores[:, :k]
    next_scores = np.asarray(native[1], dtype=np.float64)
    native_items, native_scores = np.asarray(native[0])[:, :k], next_scores[:, :k]
    diff = np.abs(np.asarray(scores, dtype=np.float64) - native_scores).max(axis=1)
    ties = np.abs(np.diff(next_scores, axis=1, append=-np.inf)[:, :k]) <= tolerance
    ties |= np.abs(np.diff(native_scores, axis=1, prepend=np.inf)) <= tolerance
    wrong = (items != native_items) & ~ties
    mismatched = wrong.any(axis=1)
    bad = (diff > tolerance) | mismatched
    worst = int(np.argmax(diff + mismatched))
    return {
        "rows": len(native_items),
        "tolerance": tolerance,
        "k": int(native_items.shape[1]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "item_mismatches": int(mismatched.sum()),
        "rows_over": int(bad.sum()),
        "worst_row": {
            "index": worst,
            "native": float(native_scores[worst, 0]),
            "onnx": float(scores[worst, 0]),
        },
        "passed": not bool(bad.any()),
    }
