"""Both stages of a two-stage recommender as one ONNX graph: candidates, features, ranker, top k.

    user_id int64 [N, 1]
      -> the factor stage (mlsd.export.retrieval_graph.factor_stage): row, all_scores [N, items]
      -> TopK(candidates)                       candidate scores [N, C], positions [N, C]
      -> Gather(user feature table, row)        [N, Fu]   (unknown users: the cold row)
      -> Gather(item feature table, positions)  [N, C, Fi]
      -> Concat(score, user, item, item - user) [N, C, F] -> Reshape [N * C, F] -> Split into F columns
      -> the ranker's own graph (skl2onnx, names prefixed "ranker_")  probabilities [N * C, 2]
      -> column 1 -> Reshape [N, C] -> TopK(k)  scores float32 [N, k]
      -> GatherElements(candidate items)        items int64 [N, k]

One graph means one registered model: the retriever and the ranker it was trained with are
versioned, rolled out, canaried and rolled back together, and the server needs no change (same
``items`` and ``scores`` outputs as a one-stage retrieval graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsd.export.onnx_graph import SCORE_OUTPUT, to_onnx
from mlsd.export.retrieval_graph import ITEMS_OUTPUT, SCORES_OUTPUT, factor_stage, ranked_graph
from mlsd.spec import ModelInput

_PREFIX = "ranker_"


def _ranker_part(ranker: Any, names: list[str]) -> tuple[list[Any], list[Any]]:
    """The ranker pipeline's graph (one float input per feature name), every name prefixed."""
    from onnx import compose

    inputs = [ModelInput(name=n, dtype="float32") for n in names]
    graph = compose.add_prefix(to_onnx(ranker, inputs), _PREFIX).graph
    return list(graph.initializer), list(graph.node)


def two_stage_to_onnx(
    model: Any,
    k: int,
    input_name: str = "user_id",
    metadata: dict[str, str] | None = None,
    name: str = "mlsd",
) -> Any:
    """The ``ModelProto`` of a fitted :class:`mlsd.training.two_stage.TwoStageModel`: the top
    ``min(k, candidates)`` of each user's candidates by the ranker's probability."""
    from onnx import helper, numpy_helper

    names = model.columns.feature_names()
    n_cols = len(model.columns.item_columns)
    c = min(model.n_candidates, len(model.item_ids_))
    k = min(k, c)
    users, items = model.tables.users, model.tables.items
    inits, nodes = factor_stage(model.retriever, input_name, exact=True)
    arrays = {
        "c": np.array([c], dtype=np.int64),
        "k": np.array([k], dtype=np.int64),
        "user_ftable": users,
        "item_ftable": items,
        "col_start_u": np.array([users.shape[1] - n_cols], dtype=np.int64),
        "col_start_i": np.array([items.shape[1] - n_cols], dtype=np.int64),
        "col_end": np.array([np.iinfo(np.int64).max], dtype=np.int64),
        "last_axis": np.array([2], dtype=np.int64),
        "one": np.array([1], dtype=np.int64),
        "n_features": np.array([users.shape[1]], dtype=np.int64),
        "flat_shape": np.array([-1, len(names)], dtype=np.int64),
        "ranked_shape": np.array([-1, c], dtype=np.int64),
        "split_sizes": np.ones(len(names), dtype=np.int64),
        "positive": np.array(1, dtype=np.int64),
        "grid": np.array(model.grid, dtype=np.float32),
    }
    inits += [numpy_helper.from_array(v, n) for n, v in arrays.items()]
    node = helper.make_node
    nodes += [
        node("TopK", ["all_scores", "c"], ["cand_scores", "cand_pos"], axis=1, largest=1, sorted=1),
        node("Gather", ["item_ids", "cand_pos"], ["cand_items"], axis=0),
        node("Gather", ["user_ftable", "row"], ["user_f"], axis=0),
        node("Unsqueeze", ["user_f", "one"], ["user_f3"]),
        node("Gather", ["item_ftable", "cand_pos"], ["item_f"], axis=0),
        node("Shape", ["cand_pos"], ["nc"]),
        node("Concat", ["nc", "n_features"], ["user_shape"], axis=0),
        node("Expand", ["user_f3", "user_shape"], ["user_fx"]),
        node("Slice", ["user_f3", "col_start_u", "col_end", "last_axis"], ["user_cols"]),
        node("Slice", ["item_f", "col_start_i", "col_end", "last_axis"], ["item_cols"]),
        node("Sub", ["item_cols", "user_cols"], ["gaps"]),
        # The score on the ranker's feature grid (mlsd.training.two_stage.GRID): x * g, rounded, / g.
        node("Mul", ["cand_scores", "grid"], ["score_scaled"]),
        node("Round", ["score_scaled"], ["score_rounded"]),
        node("Div", ["score_rounded", "grid"], ["score_on_grid"]),
        node("Unsqueeze", ["score_on_grid", "last_axis"], ["score_f"]),
        node("Concat", ["score_f", "user_fx", "item_f", "gaps"], ["features3"], axis=2),
        node("Reshape", ["features3", "flat_shape"], ["features"]),
        node("Split", ["features", "split_sizes"], [_PREFIX + n for n in names], axis=1),
    ]
    ranker_inits, ranker_nodes = _ranker_part(model.ranker, names)
    inits += ranker_inits
    nodes += ranker_nodes
    nodes += [
        node("Gather", [_PREFIX + SCORE_OUTPUT, "positive"], ["proba"], axis=1),
        node("Reshape", ["proba", "ranked_shape"], ["ranked"]),
        node("TopK", ["ranked", "k"], [SCORES_OUTPUT, "final_pos"], axis=1, largest=1, sorted=1),
        node("GatherElements", ["cand_items", "final_pos"], [ITEMS_OUTPUT], axis=1),
    ]
    return ranked_graph(inits, nodes, input_name, k, metadata, name)
