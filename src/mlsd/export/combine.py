"""Several fitted classifiers over the same inputs as one ONNX graph.

Each pipeline is converted on its own (the binary route, :func:`mlsd.export.to_onnx`), its nodes
and initializers prefixed so names cannot collide, and all are put in one graph that shares the
inputs; a ``Slice`` per pipeline takes column 1 (P(y = 1)) of its probabilities. The caller adds
the node that turns those ``[N, 1]`` columns into its output (a difference, a concatenation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlsd.export.onnx_graph import SCORE_OUTPUT, to_onnx
from mlsd.spec import ModelInput


@dataclass
class Combined:
    """The parts of the shared graph: nodes, constants, opsets, the inputs, and per prefix the
    edge holding that pipeline's P(y = 1) as ``[N, 1]``."""

    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    opsets: dict[str, int] = field(default_factory=dict)
    inputs: list[Any] = field(default_factory=list)
    positive: dict[str, str] = field(default_factory=dict)


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


def positive_columns(pipelines: Mapping[str, Any], inputs: list[ModelInput]) -> Combined:
    """Convert every pipeline (keyed by its name prefix) and slice out its P(y = 1).

    Raises:
        ExportError: a pipeline has a step skl2onnx cannot convert.
    """
    from onnx import compose

    combined = Combined()
    for prefix, pipeline in pipelines.items():
        graph = compose.add_prefix(to_onnx(pipeline, inputs, name=prefix), f"{prefix}_", rename_inputs=False)
        combined.nodes += list(graph.graph.node)
        combined.initializers += list(graph.graph.initializer)
        for opset in graph.opset_import:
            combined.opsets[opset.domain] = max(combined.opsets.get(opset.domain, 0), opset.version)
        slice_nodes, consts, combined.positive[prefix] = _column_one(f"{prefix}_", f"{prefix}_{SCORE_OUTPUT}")
        combined.nodes += slice_nodes
        combined.initializers += consts
        combined.inputs = list(graph.graph.input)
    return combined


def finish(combined: Combined, output: Any, name: str, metadata: Mapping[str, str] | None) -> Any:
    """The ModelProto of ``combined``'s graph with its one ``output`` (a value info) and metadata."""
    from onnx import helper

    graph = helper.make_graph(
        combined.nodes, name, combined.inputs, [output], initializer=combined.initializers
    )
    out = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(combined.opsets.items())]
    )
    out.ir_version = 8
    for key, value in (metadata or {}).items():
        out.metadata_props.add(key=key, value=value)
    return out
