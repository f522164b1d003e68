"""An uplift model as one ONNX graph: the model inputs in, ``uplift`` = P(treated) - P(control) out.

A T-learner is two fitted pipelines over the same inputs. Each is converted on its own (the
binary route, :func:`mlsd.export.to_onnx`), its nodes and initializers prefixed with its arm so
the names cannot collide, and both are put in one graph that shares the inputs; two ``Slice``
nodes take column 1 (P(y = 1)) of each arm's probabilities and a ``Sub`` gives the effect. The
serving path then runs one session and reads one ``[N, 1]`` float32 output.
"""

from __future__ import annotations

from typing import Any

from mlsd.export.onnx_graph import SCORE_OUTPUT, to_onnx
from mlsd.spec import ModelInput

UPLIFT_OUTPUT = "uplift"  # [N, 1] float32: P(y | treated, x) - P(y | control, x)


def _column_one(prefix: str, probabilities: str) -> tuple[list[Any], list[Any], str]:
    """Nodes and constants that slice ``probabilities[:, 1:2]``; returns the sliced edge name."""
    from onnx import TensorProto, helper

    consts = [
        helper.make_tensor(f"{prefix}{name}", TensorProto.INT64, [1], [value])
        for name, value in (("start", 1), ("end", 2), ("axis", 1))
    ]
    out = f"{prefix}p1"
    node = helper.make_node(
        "Slice", [probabilities, *(c.name for c in consts)], [out], name=f"{prefix}slice_p1"
    )
    return [node], consts, out


def uplift_to_onnx(
    model: Any, inputs: list[ModelInput], metadata: dict[str, str] | None = None, name: str = "mlsd"
) -> Any:
    """The ONNX ``ModelProto`` of a fitted T-learner (``control_`` and ``treated_`` pipelines).

    Raises:
        ExportError: an arm's pipeline has a step skl2onnx cannot convert.
    """
    from onnx import TensorProto, compose, helper

    arms = {arm: getattr(model, f"{arm}_") for arm in ("control", "treated")}
    nodes: list[Any] = []
    initializers: list[Any] = []
    opsets: dict[str, int] = {}
    p1 = {}
    for arm, pipeline in arms.items():
        graph = compose.add_prefix(to_onnx(pipeline, inputs, name=arm), f"{arm}_", rename_inputs=False)
        nodes += list(graph.graph.node)
        initializers += list(graph.graph.initializer)
        for opset in graph.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        slice_nodes, consts, p1[arm] = _column_one(f"{arm}_", f"{arm}_{SCORE_OUTPUT}")
        nodes += slice_nodes
        initializers += consts
        graph_inputs = list(graph.graph.input)
    nodes.append(helper.make_node("Sub", [p1["treated"], p1["control"]], [UPLIFT_OUTPUT], name="uplift"))
    output = helper.make_tensor_value_info(UPLIFT_OUTPUT, TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph(nodes, name, graph_inputs, [output], initializer=initializers)
    out = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())]
    )
    out.ir_version = 8
    for key, value in (metadata or {}).items():
        out.metadata_props.add(key=key, value=value)
    return out
