"""Evidently snapshots: their metric values as a flat dict, and the workspace that keeps them.

``evidently ui --workspace monitoring/workspace`` shows one project per problem with a dashboard
built from the spec: drift share over time, per-feature drift, mean prediction against the
reference, and the online metric per serving variant (from the ``quality`` snapshots).

A panel that draws one series is a bar chart, one bar per monitoring run: the UI (evidently 0.7.23)
sizes a line chart's y axis to the data alone, so a series that stays at 0.14 gets a zero-height
axis with a single tick labelled "0"; bars start at 0, so the axis runs from 0 to the value.
Windows overlap (each run looks back ``monitoring.window``, runs are hourly), so the request
counter shows the latest window's count, never a sum over windows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Project, Workspace

VARIANTS = ("stable", "canary")
# (title, metric, labels) of the online-quality panels, drawn once per variant.
QUALITY_PANELS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("Online log loss", "LogLoss", {}),
    ("Online ROC AUC", "RocAuc", {}),
    ("Observed rate (online metric)", "MeanValue", {"column": "label"}),
    ("Mean score", "MeanValue", {"column": "score"}),
)


def metric_values(snapshot: Snapshot) -> dict[str, Any]:
    """Values by metric type, qualified by column: ``ValueDrift:age``, ``MeanValue:score``, ``RowCount``."""
    out: dict[str, Any] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        out[f"{kind}:{config['column']}" if "column" in config else kind] = metric["value"]
    return out


def finite(value: Any) -> float | None:
    """A metric value as a float, ``None`` when it is NaN or infinite (undefined, e.g. AUC of one class)."""
    number = float(value)
    return number if math.isfinite(number) else None


def _dashboard(project: Project, drift_columns: list[str]) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel, text_panel

    def drift(metric: str, legend: str, **labels: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric=metric, metric_labels=labels, tags=["drift"])

    board = project.dashboard
    board.add_panel(text_panel(title=f"{project.name}: drift and online quality"))
    board.add_panel(
        counter_panel(
            title="Share of drifted features (latest window)",
            size="half",
            values=[drift("DriftedColumnsCount", "share", value_type="share")],
        )
    )
    board.add_panel(
        counter_panel(
            title="Served requests (latest window)",
            size="half",
            values=[drift("RowCount", "requests")],
            aggregation="last",
        )
    )
    board.add_panel(
        bar_plot_panel(
            title="Share of drifted features per run",
            values=[drift("DriftedColumnsCount", "drifted share", value_type="share")],
        )
    )
    board.add_panel(
        line_plot_panel(
            title="Per-feature drift (distance; a feature drifts at >= the threshold)",
            values=[drift("ValueDrift", c, column=c) for c in drift_columns],
        )
    )
    board.add_panel(
        line_plot_panel(
            title="Mean prediction and prediction drift",
            values=[
                drift("MeanValue", "mean score", column="score"),
                drift("ValueDrift", "score drift", column="score"),
            ],
        )
    )
    # One panel per variant: evidently 0.7.23's local storage matches each point to the first
    # filter with the same metric and labels and then drops it if the metadata (variant) differs,
    # so two variants in one panel would draw stable's line only (tests/test_evidently_ui.py).
    for title, metric, labels in QUALITY_PANELS:
        for variant in VARIANTS:
            value = PanelMetric(
                legend=variant,
                metric=metric,
                metric_labels=labels,
                tags=["quality"],
                metadata={"variant": variant},
            )
            board.add_panel(bar_plot_panel(title=f"{title} ({variant})", values=[value], size="half"))


def open_project(
    path: Path, name: str, description: str, drift_columns: list[str]
) -> tuple[Workspace, Project]:
    """The workspace at ``path`` and its project ``name``, created with its dashboard on first use."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(path))
    found = workspace.search_project(name)
    if found:
        return workspace, found[0]
    project = workspace.create_project(name, description=description)
    _dashboard(project, drift_columns)
    return workspace, project


def add_snapshots(
    path: Path, name: str, description: str, drift_columns: list[str], snapshots: list[Snapshot]
) -> list[str]:
    """Store ``snapshots`` in the problem's project; returns their ids."""
    workspace, project = open_project(path, name, description, drift_columns)
    return [str(workspace.add_run(project.id, s).id) for s in snapshots]
