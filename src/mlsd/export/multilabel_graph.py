"""A multi-label model as one ONNX graph: the model inputs in, ``label_scores`` ``[N, classes]`` out.

One fitted pipeline per class (:class:`mlsd.training.multilabel.OneModelPerLabel`) over the same
inputs, put in one graph that shares them (:mod:`mlsd.export.combine`); a ``Concat`` of every
class's P(label = 1) gives one row of scores per post, column j for class j of the spec's
``label.classes``. Serving runs one session per request whatever the number of classes.
"""

from __future__ import annotations

from typing import Any

from mlsd.errors import ExportError
from mlsd.export.combine import finish, positive_columns
from mlsd.spec import ModelInput

MULTILABEL_OUTPUT = "label_scores"  # [N, classes] float32: P(label_j = 1)


def multilabel_to_onnx(
    model: Any,
    inputs: list[ModelInput],
    classes: list[str],
    metadata: dict[str, str] | None = None,
    name: str = "mlsd",
) -> Any:
    """The ONNX ``ModelProto`` of a fitted multi-label model (``estimators_``, one per class);
    the class names go in the metadata (``classes``) in output column order.

    Raises:
        ExportError: the model has not one pipeline per class, or one cannot be converted.
    """
    from onnx import TensorProto, helper

    estimators = list(getattr(model, "estimators_", []))
    if len(estimators) != len(classes):
        raise ExportError(
            f"the multi-label model has {len(estimators)} fitted pipelines for {len(classes)} classes "
            f"{classes}; fit it on the [rows, classes] label matrix"
        )
    combined = positive_columns({f"label_{c}": e for c, e in zip(classes, estimators, strict=True)}, inputs)
    columns = [combined.positive[f"label_{c}"] for c in classes]
    combined.nodes.append(helper.make_node("Concat", columns, [MULTILABEL_OUTPUT], name="scores", axis=1))
    output = helper.make_tensor_value_info(MULTILABEL_OUTPUT, TensorProto.FLOAT, [None, len(classes)])
    return finish(combined, output, name, {**(metadata or {}), "classes": ",".join(classes)})
