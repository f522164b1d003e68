"""The real `evidently ui` on a workspace that mlsd.monitoring built: the problem's project, its
snapshots, the dashboard's panels and the data series the panels draw, read through the UI's own
HTTP API on a loopback port (the same requests its web page makes).

The workspace holds what the monitoring pipeline writes: per window, one drift snapshot
(``drift_report``) and one quality snapshot per serving variant (``quality_report``). Three daily
windows: ``age`` shifts more every day, the other columns keep the reference's distribution.
``bench/screenshot_dashboard.py`` serves the same kind of workspace for the docs' screenshot.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlsd.monitoring.drift import DriftParams, column_kinds, drift_report
from mlsd.monitoring.quality import quality_report
from mlsd.monitoring.snapshots import QUALITY_PANELS, VARIANTS, add_snapshots, metric_values
from tests.server import Process, free_port, get, post

PROBLEM = "ad_click"
QUESTION = "Predict the probability that a user clicks an ad shown in a given slot."
DRIFT_COLUMNS = ["age", "device", "country", "user_ctr_7d", "ad_ctr_7d", "position", "hour"]
CATEGORICAL = {"device", "country"}
SHIFTED = "age"
AGE_SHIFTS = (0.0, 3.0, 8.0)  # years added to the users' age in each current window
START = datetime(2025, 3, 3)  # the first window; one window a day
PARAMS = DriftParams()
# The dashboard snapshots.py builds, in order (the text panel first).
PANEL_TITLES = [
    f"{PROBLEM}: drift and online quality",
    "Share of drifted features (latest window)",
    "Served requests (latest window)",
    "Share of drifted features per run",
    "Per-feature drift (distance; a feature drifts at >= the threshold)",
    "Mean prediction and prediction drift",
    *(f"{title} ({v})" for title, _, _ in QUALITY_PANELS for v in VARIANTS),
]
METRIC = "evidently:metric_v2:{}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def traffic(n: int, rng: np.random.Generator, age_shift: float = 0.0) -> pd.DataFrame:
    """``n`` served requests: the drift columns, the served ``score``, the ``label`` (a click) and
    the ``variant`` that scored it (the canary's scores are noisier: a worse model)."""
    frame = pd.DataFrame(
        {
            "age": np.clip(np.round(rng.normal(34 + age_shift, 10, n)), 13, 100),
            "device": rng.choice(["ios", "android", "desktop"], n, p=[0.45, 0.4, 0.15]),
            "country": rng.choice(["US", "GB", "DE", "IN", "BR"], n, p=[0.4, 0.15, 0.15, 0.2, 0.1]),
            "user_ctr_7d": rng.beta(1, 30, n),
            "ad_ctr_7d": rng.beta(2, 60, n),
            "position": rng.integers(1, 11, n).astype(float),
            "hour": rng.integers(0, 24, n).astype(float),
        }
    )
    logit = (
        -3.0
        + 25.0 * (frame["user_ctr_7d"] - 0.03)
        - 0.15 * (frame["position"] - 5)
        + 0.02 * (frame["age"] - 34)
        + 0.8 * (frame["country"] == "US")
    ).to_numpy()
    frame["label"] = (rng.random(n) < _sigmoid(logit)).astype(int)
    frame["variant"] = rng.choice(list(VARIANTS), n, p=[0.7, 0.3])
    noise = np.where(frame["variant"] == "canary", 0.9, 0.3)
    frame["score"] = _sigmoid(logit + rng.normal(0, 1, n) * noise)
    return frame


@dataclass
class Built:
    """What went into the workspace, as computed in this process."""

    snapshot_ids: list[str]
    timestamps: list[datetime]  # one per window
    rows: list[int]  # served requests per window
    drift: list[dict[str, Any]]  # metric_values of the drift snapshot, per window
    quality: dict[str, list[dict[str, Any]]]  # metric_values per variant, per window


def build_workspace(
    path: Path,
    age_shifts: Sequence[float] = AGE_SHIFTS,
    rows: int = 1500,
    reference_rows: int = 4000,
    start: datetime = START,
    seed: int = 0,
) -> Built:
    """An Evidently workspace at ``path`` with one window a day from ``start``, as the monitoring
    pipeline fills it: a drift snapshot per window and a quality snapshot per variant and window."""
    rng = np.random.default_rng(seed)
    reference = traffic(reference_rows, rng)
    kinds = column_kinds(DRIFT_COLUMNS, CATEGORICAL)
    snapshots, drift, quality = [], [], {v: [] for v in VARIANTS}
    timestamps = [start + timedelta(days=i) for i in range(len(age_shifts))]
    for when, shift in zip(timestamps, age_shifts, strict=True):
        current = traffic(rows, rng, age_shift=shift)
        snapshot = drift_report(reference, current, kinds, PARAMS, timestamp=when)
        snapshots.append(snapshot)
        drift.append(metric_values(snapshot))
        for variant, served in current.groupby("variant"):
            snapshot = quality_report(served, str(variant), timestamp=when)
            snapshots.append(snapshot)
            quality[str(variant)].append(metric_values(snapshot))
    ids = add_snapshots(path, PROBLEM, QUESTION, DRIFT_COLUMNS, snapshots)
    return Built(ids, timestamps, [rows] * len(age_shifts), drift, quality)


class EvidentlyUI(Process):
    """`evidently ui --workspace WORKSPACE` on a free loopback port, telemetry off."""

    name, ready_path = "evidently ui", "/api/version"

    def __init__(self, workspace: Path, log: Path) -> None:
        port = free_port()
        command = [
            str(Path(sys.executable).with_name("evidently")), "ui",
            "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        super().__init__(command, workspace.parent, {}, log, port)

    def get_json(self, route: str) -> Any:
        status, text = get(f"{self.url}{route}")
        assert status == 200, f"GET {route}: {status} {text[:2000]}"
        return json.loads(text)

    def post_json(self, route: str, body: Any) -> Any:
        status, answer = post(f"{self.url}{route}", body)
        assert status in (200, 201), f"POST {route}: {status} {str(answer)[:2000]}"
        return answer

    def __enter__(self) -> EvidentlyUI:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def series_request(panel: dict[str, Any]) -> dict[str, Any]:
    """The body the UI's dashboard page posts to draw ``panel`` (one filter per panel value)."""
    keys = ("metric", "tags", "metadata", "metric_labels")
    return {"series_filter": [{k: value[k] for k in keys} for value in panel["values"]]}


@dataclass
class Served:
    ui: EvidentlyUI
    built: Built
    project: dict[str, Any]
    dashboard: dict[str, Any]

    def panel(self, title: str) -> dict[str, Any]:
        found = [p for p in self.dashboard["panels"] if p["title"] == title]
        assert len(found) == 1, [p["title"] for p in self.dashboard["panels"]]
        return found[0]

    def series(self, title: str) -> dict[str, Any]:
        route = f"/api/v2/snapshots/{self.project['id']}/data_series_batch"
        return self.ui.post_json(route, series_request(self.panel(title)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("evidently")
    built = build_workspace(root / "workspace")
    with EvidentlyUI(root / "workspace", root / "ui.log") as ui:
        projects = ui.get_json("/api/projects")
        assert [p["name"] for p in projects] == [PROBLEM]
        dashboard = ui.get_json(f"/api/v2/dashboards/{projects[0]['id']}")
        yield Served(ui, built, projects[0], dashboard)


def by_column(response: dict[str, Any]) -> dict[str, list[float | None]]:
    return {s["params"]["column"]: s["values"] for s in response["series"]}


def present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


@pytest.mark.slow
def test_the_project_lists_every_snapshot_at_its_window(served: Served) -> None:
    project, built = served.project, served.built
    assert project["description"] == QUESTION
    assert served.ui.get_json(f"/api/projects/{project['id']}/info")["name"] == PROBLEM
    snapshots = served.ui.get_json(f"/api/projects/{project['id']}/snapshots")
    assert sorted(s["id"] for s in snapshots) == sorted(built.snapshot_ids)
    windows = [datetime.fromisoformat(w) for w in sorted({s["timestamp"] for s in snapshots})]
    assert windows == built.timestamps
    for window in built.timestamps:
        here = [s for s in snapshots if datetime.fromisoformat(s["timestamp"]) == window]
        assert sorted((s["tags"], s["metadata"].get("variant", "")) for s in here) == [
            (["drift"], ""),
            (["quality"], "canary"),
            (["quality"], "stable"),
        ]


@pytest.mark.slow
def test_the_dashboard_has_the_monitoring_panels(served: Served) -> None:
    panels = served.dashboard["panels"]
    assert [p["title"] for p in panels] == PANEL_TITLES
    assert [tab["panels"] for tab in served.dashboard["tabs"]] == [[p["id"] for p in panels]]
    per_feature = served.panel(PANEL_TITLES[4])
    assert [v["legend"] for v in per_feature["values"]] == DRIFT_COLUMNS
    assert {v["metric"] for v in per_feature["values"]} == {METRIC.format("ValueDrift")}
    plots = {p["title"]: p["plot_params"]["plot_type"] for p in panels}
    assert plots[PANEL_TITLES[1]] == plots[PANEL_TITLES[2]] == "counter"
    assert plots[PANEL_TITLES[4]] == plots[PANEL_TITLES[5]] == "line"
    # One series over time is drawn as bars: the UI sizes a line chart's y axis to the data alone,
    # and a series that stays at 0.14 got one tick, "0" (bars start at 0, so the axis is 0-0.14).
    for panel in panels:
        if panel["plot_params"]["plot_type"] in ("line", "bar") and len(panel["values"]) == 1:
            assert panel["plot_params"]["plot_type"] == "bar", panel["title"]
    # Windows overlap (each run looks back monitoring.window): the counter shows the latest one,
    # never a sum that counts each request once per run that saw it.
    assert served.panel(PANEL_TITLES[2])["plot_params"]["aggregation"] == "last"
    # The page the UI serves for the dashboard (what bench/screenshot_dashboard.py renders).
    status, page = get(f"{served.ui.url}/projects/{served.project['id']}")
    assert status == 200
    assert '<div id="root">' in page


@pytest.mark.slow
def test_the_per_feature_panel_draws_the_computed_drift(served: Served) -> None:
    built = served.built
    response = served.series(PANEL_TITLES[4])
    assert [datetime.fromisoformat(s["timestamp"]) for s in response["sources"]] == built.timestamps
    drawn = by_column(response)
    assert sorted(drawn) == sorted(DRIFT_COLUMNS)
    for column in DRIFT_COLUMNS:
        computed = [d[f"ValueDrift:{column}"] for d in built.drift]
        assert drawn[column] == pytest.approx(computed, rel=1e-9), column
    shifted = drawn[SHIFTED]
    threshold = PARAMS.threshold_for(SHIFTED)
    assert shifted[0] < threshold <= shifted[1] < shifted[2]  # drifts on day 2, more on day 3
    assert all(v < threshold for c in DRIFT_COLUMNS if c != SHIFTED for v in drawn[c])
    params = {s["params"]["column"]: s["params"] for s in response["series"]}
    assert params[SHIFTED]["method"] == PARAMS.num_method
    assert params["device"]["method"] == PARAMS.cat_method
    assert float(params[SHIFTED]["threshold"]) == threshold


@pytest.mark.slow
def test_the_share_and_counter_panels_draw_the_drift_windows(served: Served) -> None:
    built = served.built
    (share,) = served.series(PANEL_TITLES[3])["series"]
    assert share["values"] == [pytest.approx(d["DriftedColumnsCount"]["share"]) for d in built.drift]
    assert share["values"] == pytest.approx([0.0, 1 / 7, 1 / 7])  # only age, from day 2
    (requests,) = served.series(PANEL_TITLES[2])["series"]
    assert requests["values"] == built.rows  # drift snapshots only: quality ones count labelled rows


@pytest.mark.slow
def test_each_variant_panel_draws_that_variant_over_the_windows(served: Served) -> None:
    built = served.built
    computed = {
        "LogLoss": "LogLoss",
        "RocAuc": "RocAuc",
        "label": "MeanValue:label",
        "score": "MeanValue:score",
    }
    for title, metric, labels in QUALITY_PANELS:
        key = computed[labels.get("column", metric)]
        for variant in VARIANTS:
            response = served.series(f"{title} ({variant})")
            assert len(response["sources"]) == len(built.timestamps), (title, variant)
            (series,) = response["series"]
            expected = [q[key] for q in built.quality[variant]]
            assert present(series["values"]) == pytest.approx(expected, rel=1e-9), (title, variant)
    stable, canary = (built.quality[v] for v in VARIANTS)
    assert all(c["LogLoss"] > s["LogLoss"] for s, c in zip(stable, canary, strict=True))  # noisier canary
