"""An uplift model as one ONNX graph: the model inputs in, ``uplift`` = P(treated) - P(control) out.

A T-learner is two fitted pipelines over the same inputs, put in one graph that shares the inputs
(:mod:`mlsd.export.combine`); a ``Sub`` of the two arms' P(y = 1) gives the effect. The serving
path then runs one session and reads one ``[N, 1]`` float32 output.
"""

from __future__ import annotations

from typing import Any

from mlsd.export.combine import finish, positive_columns
from mlsd.spec import ModelInput

UPLIFT_OUTPUT = "uplift"  # [N, 1] float32: P(y | treated, x) - P(y | control, x)


def uplift_to_onnx(
    model: Any, inputs: list[ModelInput], metadata: dict[str, str] | None = None, name: str = "mlsd"
) -> Any:
    """The ONNX ``ModelProto`` of a fitted T-learner (``control_`` and ``treated_`` pipelines).

    Raises:
        ExportError: an arm's pipeline has a step skl2onnx cannot convert.
    """
    from onnx import TensorProto, helper

    combined = positive_columns({arm: getattr(model, f"{arm}_") for arm in ("control", "treated")}, inputs)
    p1 = combined.positive
    combined.nodes.append(
        helper.make_node("Sub", [p1["treated"], p1["control"]], [UPLIFT_OUTPUT], name="uplift")
    )
    output = helper.make_tensor_value_info(UPLIFT_OUTPUT, TensorProto.FLOAT, [None, 1])
    return finish(combined, output, name, metadata)
