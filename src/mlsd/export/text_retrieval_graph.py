"""Text retrieval as one ONNX graph: query text -> TF-IDF -> cosine with every document -> top k.

    query string [N, 1]
      -> StringNormalizer(LOWER, locale "C")            ASCII A-Z lowercased, as the model was fitted
      -> TfIdfVectorizer + L2 Normalizer (skl2onnx's conversion of the fitted vectorizer)  [N, V]
      -> MatMul(document matrix^T)                     similarities [N, D]
      -> TopK(candidates)                              candidate similarities, rows [N, C]
      -> logit = w0 * similarity + Gather(document features) . w + b   (the pointwise ranker)
      -> TopK(k)                                       scores float32 [N, k]
      -> GatherElements(rows) -> Gather(document ids)  items int64 [N, k]

With an escalation head (an answer-or-escalate problem) a third output:

      sigmoid(a0 * scores[:, 0] + query vector . a + b)  answer_p float32 [N]
      * (query vector has a word of the vocabulary)    a query of unknown words only: 0

The outputs are named and shaped like a factor recommender's (:data:`RETRIEVAL_OUTPUTS`), so the
same serving path (mlsd.serving.Recommender) and parity report read both. The document matrix is an
initializer: ``D x V`` float32, fine for a few thousand documents; past that, an ANN index.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mlsd.errors import ExportError
from mlsd.export.onnx_graph import OPSET, session, sort_opsets
from mlsd.export.retrieval_graph import ITEMS_OUTPUT, RETRIEVAL_OUTPUTS, SCORES_OUTPUT, compare_ranked

ANSWER_OUTPUT = "answer_p"


def has_escalation(model: Any) -> bool:
    """Whether a fitted retriever carries an escalation head (its graph has ``answer_p``)."""
    return hasattr(model, "answer_weights_")


class TextIndex(Protocol):
    """What the graph is built from (mlsd.training.text_retrieval.TextRetriever once fitted)."""

    vectorizer_: Any
    doc_ids_: np.ndarray
    doc_matrix_: np.ndarray
    doc_features_: np.ndarray
    weights_: np.ndarray
    bias_: float
    candidates: int

    def recommend(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


CASE_LOCALE = "C"
"""StringNormalizer's locale: the one every platform has; it lowercases exactly ASCII A-Z, which is
what :func:`mlsd.training.text_retrieval.fold_case` does natively (a named locale such as en_US
must be installed on the serving machine, or ONNX Runtime refuses the graph)."""


def _vectorizer_graph(model: TextIndex, input_name: str) -> Any:
    """skl2onnx's graph of the fitted vectorizer behind a case fold: ``input_name`` string
    [N, 1] -> lowercased [N, 1] -> [N, V] float."""
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    folded = f"{input_name}_folded"
    try:
        onnx_model = convert_sklearn(
            model.vectorizer_,
            initial_types=[(folded, StringTensorType([None, 1]))],
            target_opset=OPSET,
            name="tfidf",
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError types
        raise ExportError(f"cannot export the TF-IDF vectorizer to ONNX: {exc}") from exc
    graph = onnx_model.graph
    graph.input[0].name = input_name
    node = helper.make_node
    fold = [  # StringNormalizer takes [C]: flatten the column, fold, and give it its column back
        node("Reshape", [input_name, "fold_flat"], [f"{input_name}_flat"]),
        node(
            "StringNormalizer",
            [f"{input_name}_flat"],
            [f"{input_name}_lower"],
            case_change_action="LOWER",
            is_case_sensitive=1,
            locale=CASE_LOCALE,
        ),
        node("Reshape", [f"{input_name}_lower", "fold_column"], [folded]),
    ]
    for position, step in enumerate(fold):
        graph.node.insert(position, step)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "fold_flat"),
            numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "fold_column"),
        ]
    )
    return onnx_model


def _ranking_nodes(model: TextIndex, vector: str, k: int) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers from the query vector ``vector`` to the two outputs."""
    from onnx import helper, numpy_helper

    c = min(model.candidates, len(model.doc_ids_))
    feats = np.asarray(model.doc_features_, dtype=np.float32)
    weights = np.asarray(model.weights_, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {
        "doc_matrix_t": np.ascontiguousarray(model.doc_matrix_.T, dtype=np.float32),
        "doc_ids": np.asarray(model.doc_ids_, dtype=np.int64),
        "n_candidates": np.array([c], dtype=np.int64),
        "k": np.array([min(k, c)], dtype=np.int64),
        "sim_weight": weights[:1],
        "bias": np.array([model.bias_], dtype=np.float32),
    }
    node = helper.make_node
    nodes = [
        node("MatMul", [vector, "doc_matrix_t"], ["similarities"]),
        node(
            "TopK", ["similarities", "n_candidates"], ["candidate_sims", "rows"], axis=1, largest=1, sorted=1
        ),
        node("Mul", ["candidate_sims", "sim_weight"], ["weighted_sims"]),
    ]
    logit = "weighted_sims"
    if feats.shape[1]:
        arrays["doc_features"], arrays["feature_weights"] = feats, weights[1:].reshape(-1, 1)
        arrays["squeeze_axes"] = np.array([2], dtype=np.int64)
        nodes += [
            node("Gather", ["doc_features", "rows"], ["candidate_features"], axis=0),
            node("MatMul", ["candidate_features", "feature_weights"], ["feature_logit_3d"]),
            node("Squeeze", ["feature_logit_3d", "squeeze_axes"], ["feature_logit"]),
            node("Add", ["weighted_sims", "feature_logit"], ["sum_logit"]),
        ]
        logit = "sum_logit"
    nodes += [
        node("Add", [logit, "bias"], ["logits"]),
        node("TopK", ["logits", "k"], [SCORES_OUTPUT, "order"], axis=1, largest=1, sorted=1),
        node("GatherElements", ["rows", "order"], ["top_rows"], axis=1),
        node("Gather", ["doc_ids", "top_rows"], [ITEMS_OUTPUT], axis=0),
    ]
    return nodes, [numpy_helper.from_array(value, name) for name, value in arrays.items()]


def _answer_nodes(model: Any, vector: str) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers of the escalation head: the query vector and the top score -> answer_p."""
    from onnx import helper, numpy_helper

    weights = np.asarray(model.answer_weights_, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {
        "answer_top_weight": weights[:1],
        "answer_vector_weights": weights[1:].reshape(-1, 1),
        "answer_bias": np.array([model.answer_bias_], dtype=np.float32),
        "first": np.array([0], dtype=np.int64),
        "second": np.array([1], dtype=np.int64),
        "flat": np.array([-1], dtype=np.int64),
        "vocabulary_ones": np.ones((len(weights) - 1, 1), dtype=np.float32),
        "zero": np.array([0.0], dtype=np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Slice", [SCORES_OUTPUT, "first", "second", "second"], ["top_score"]),
        node("Mul", ["top_score", "answer_top_weight"], ["answer_top_logit"]),
        node("MatMul", [vector, "answer_vector_weights"], ["answer_query_logit"]),
        node("Add", ["answer_top_logit", "answer_query_logit"], ["answer_sum"]),
        node("Add", ["answer_sum", "answer_bias"], ["answer_logit"]),
        node("Sigmoid", ["answer_logit"], ["answer_p_head"]),
        # TF-IDF weights are >= 0: their sum is 0 exactly when no word of the query is known
        node("MatMul", [vector, "vocabulary_ones"], ["query_mass"]),
        node("Greater", ["query_mass", "zero"], ["query_known"]),
        node("Cast", ["query_known"], ["query_known_f"], to=1),  # 1 = FLOAT
        node("Mul", ["answer_p_head", "query_known_f"], ["answer_p_2d"]),
        node("Reshape", ["answer_p_2d", "flat"], [ANSWER_OUTPUT]),
    ]
    return nodes, [numpy_helper.from_array(value, name) for name, value in arrays.items()]


def text_retrieval_to_onnx(
    model: TextIndex,
    k: int,
    input_name: str = "query",
    metadata: dict[str, str] | None = None,
    name: str = "mlsd",
) -> Any:
    """The ``ModelProto`` ranking ``min(k, candidates, documents)`` documents for each query text
    (and, for a retriever with an escalation head, its ``answer_p``).

    Raises:
        ExportError: the vectorizer does not convert.
    """
    from onnx import TensorProto, helper

    onnx_model = _vectorizer_graph(model, input_name)
    graph = onnx_model.graph
    (vector,) = [o.name for o in graph.output]
    nodes, initializers = _ranking_nodes(model, vector, k)
    top = min(k, model.candidates, len(model.doc_ids_))
    outputs = [
        helper.make_tensor_value_info(ITEMS_OUTPUT, TensorProto.INT64, ["N", top]),
        helper.make_tensor_value_info(SCORES_OUTPUT, TensorProto.FLOAT, ["N", top]),
    ]
    if has_escalation(model):
        answer_nodes, answer_inits = _answer_nodes(model, vector)
        nodes, initializers = nodes + answer_nodes, initializers + answer_inits
        outputs.append(helper.make_tensor_value_info(ANSWER_OUTPUT, TensorProto.FLOAT, ["N"]))
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    del graph.output[:]
    graph.output.extend(outputs)
    graph.name = name
    sort_opsets(onnx_model)
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=value)
    return onnx_model


def text_feeds(queries: np.ndarray, input_name: str = "query") -> dict[str, np.ndarray]:
    """The graph's input for a list of query texts."""
    return {input_name: np.asarray(queries, dtype=object).reshape(-1, 1)}


def text_retrieval_parity(
    onnx_model: Any,
    model: TextIndex,
    queries: np.ndarray,
    k: int,
    *,
    tolerance: float,
    input_name: str = "query",
) -> dict[str, Any]:
    """ONNX Runtime's top k against ``model.recommend`` for every query (the retrieval parity
    report: items position by position except at ties, scores within ``tolerance``), and with an
    escalation head its ``answer_p`` within ``tolerance`` too."""
    native = model.recommend(queries, k)
    escalation = has_escalation(model)
    outputs = [*RETRIEVAL_OUTPUTS, *([ANSWER_OUTPUT] if escalation else [])]
    try:
        onnx_out = session(onnx_model).run(outputs, text_feeds(queries, input_name))
    except Exception as exc:  # ORT raises its own types for a bad graph or input
        return {"rows": len(queries), "tolerance": tolerance, "passed": False, "error": str(exc)}
    report = compare_ranked(native, (onnx_out[0], onnx_out[1]), tolerance=tolerance)
    if escalation:
        native_p = model.answer_p(queries)  # type: ignore[attr-defined]  # has_escalation checked it
        gap = float(np.max(np.abs(np.asarray(onnx_out[2]) - native_p), initial=0.0))
        report["answer_p_max_abs_diff"] = gap
        report["passed"] = bool(report["passed"] and gap <= tolerance)
    return report
