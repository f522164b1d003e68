"""Rewrite docs/DESIGN.md with the run's measured numbers, once a model is registered.

The node takes every report the document shows (:data:`mlsd.design.REPORTS`, by catalog name) and
all parameters; ``mlsd design`` renders the same inputs, so ``mlsd design --check`` passes right
after a run. A failed gate stops the run before this node, and the document keeps its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.pipeline import Pipeline, node, pipeline

from mlsd.design import REPORTS, render_design
from mlsd.spec.loader import SPEC_KEY


def write_design_doc(parameters: Mapping[str, Any], **reports: Mapping[str, Any] | None) -> str:
    """The design document from the spec in ``parameters`` and the reports (None: not measured)."""
    measured = {name: report for name, report in reports.items() if report is not None}
    return render_design(parameters[SPEC_KEY], parameters, measured)


def create_pipeline() -> Pipeline:
    inputs = {"parameters": "parameters", **{name: name for name in REPORTS}}
    return pipeline([node(write_design_doc, inputs, "design_doc", name="write_design_doc")])
