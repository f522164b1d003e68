"""Data and prediction drift of served traffic against the training data, with Evidently.

The reference is a sample of the training data's latest span (``reference_span``: its trailing
window features are full, as the online store's are; the first days of the data are not),
scored by the stable model; the current window is the prediction log: the exact feature vectors the model
saw and the scores it returned. Every drift column gets one Evidently ``ValueDrift`` with a
method and threshold set here, not auto-picked, so the decision rule is known and the same at
any sample size: both default methods are distances (normed Wasserstein for numbers,
Jensen-Shannon for categories) and a column drifts when its distance is ``>= threshold``.
p-value tests (KS, chi-square) flag negligible shifts once windows reach tens of thousands of
rows; distances do not. A free-text column is compared through its number of tokens (the spec's
token pattern), a number Evidently can measure: longer or padded ads, or empty fields, show.
``DriftedColumnsCount`` runs with the same per-column methods, and the summary checks that its
share agrees with the per-column verdicts.

A feature view whose newest stored row is older than its TTL is served as its defaults to every
request (``expired_views``: in the demo the data ends at 00:00 UTC, so a 1-hour velocity view is
past its TTL all day). Compared with the training data's values it would read as drift, although
the model gets exactly what the online store can give; the reference gets the same defaults
(:func:`reference_as_served`) and the report names the views, their age and TTL instead.

The result is an Evidently snapshot (HTML, JSON, and the workspace's dashboards) and a plain
summary dict (``drift.json``: what the Prometheus exporter and the retraining trigger read).
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mlsd.errors import ConfigError
from mlsd.monitoring.snapshots import finite, metric_values
from mlsd.spec import ProblemSpec
from mlsd.spec.schema import TOKEN_PATTERN, Duration

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

Kind = Literal["numerical", "categorical", "text"]
PREDICTION = "score"


class DriftParams(BaseModel):
    """conf ``monitoring:``: which traffic is compared, and how drift is decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Duration = Field(
        default=timedelta(hours=1),
        description="current window: the last span of logs (hourly runs: the traffic since the last one)",
    )
    since: AwareDatetime | None = Field(
        default=None,
        description="the current window starts here instead (ISO 8601 with its offset, or unix seconds): "
        "the traffic since a deploy or a scenario began, whenever the run starts; null: the last `window`",
    )
    min_rows: int = Field(default=200, ge=10, description="fewer served requests: no drift verdict")
    reference_span: Duration = Field(
        default=timedelta(days=2), description="the reference: the training set's latest span of time"
    )
    reference_rows: int = Field(default=50_000, ge=100, description="reference sample size (seeded)")
    num_method: str = Field(default="wasserstein", description="Evidently stat test for numbers")
    cat_method: str = Field(default="jensenshannon", description="Evidently stat test for categories")
    threshold: float = Field(default=0.1, gt=0, description="a column drifts when its distance >= this")
    column_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-column overrides of threshold (score: the prediction)"
    )

    def threshold_for(self, column: str) -> float:
        return self.column_thresholds.get(column, self.threshold)

    seed: int = 7
    workspace: str = Field(default="monitoring/workspace", description="Evidently workspace (evidently ui)")
    apply_canary_verdict: bool = Field(
        default=False, description="promote / roll back the canary as the analysis says"
    )


def column_kinds(
    columns: list[str], categorical: Collection[str], text: Collection[str] = ()
) -> dict[str, Kind]:
    """Each drift column as Evidently should treat it (text: as its token count, a number)."""
    return {c: "text" if c in text else "categorical" if c in categorical else "numerical" for c in columns}


def token_counts(frame: pd.DataFrame, kinds: dict[str, Kind]) -> pd.DataFrame:
    """``frame`` with each text column replaced by its number of tokens (float)."""
    text = [c for c, k in kinds.items() if k == "text" and c in frame]
    if not text:
        return frame
    counted = {c: frame[c].astype(str).str.count(TOKEN_PATTERN).astype("float64") for c in text}
    return frame.assign(**counted)


def _definition(kinds: dict[str, Kind], extra_numerical: list[str]) -> Any:
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k != "categorical"] + extra_numerical,
        categorical_columns=[c for c, k in kinds.items() if k == "categorical"],
    )


def _method(kind: Kind, params: DriftParams) -> str:
    return params.cat_method if kind == "categorical" else params.num_method


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, Kind],
    params: DriftParams,
    tags: list[str] | None = None,
    timestamp: datetime | None = None,
) -> Snapshot:
    """Run the Evidently report: one ValueDrift per column and for the score, drifted count, means.

    Args:
        reference: drift columns and ``score`` of the reference sample (text columns as text).
        current: the same columns for the current window.
        kinds: drift column -> numerical | categorical.
        params: methods and threshold.
        tags: snapshot tags (the workspace's dashboards filter on them).
        timestamp: the snapshot's time on the dashboards (default: now).

    Raises:
        ConfigError: a drift column or ``score`` is missing from either frame.
    """
    from evidently import Dataset, Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, RowCount, ValueDrift

    needed = [*kinds, PREDICTION]
    for name, frame in (("reference", reference), ("current", current)):
        lacking = [c for c in needed if c not in frame]
        if lacking:
            raise ConfigError(f"drift: the {name} data has no column(s) {lacking}")
    unknown = sorted(set(params.column_thresholds) - set(needed))
    if unknown:
        raise ConfigError(f"monitoring.column_thresholds: {unknown} are not drift columns {needed}")
    methods = {c: _method(k, params) for c, k in kinds.items()}
    metrics: list[Any] = [
        RowCount(),
        DriftedColumnsCount(
            columns=list(kinds),
            per_column_method=methods,
            per_column_threshold={c: params.threshold_for(c) for c in kinds},
            drift_share=1.0,
        ),
        *(ValueDrift(column=c, method=m, threshold=params.threshold_for(c)) for c, m in methods.items()),
        ValueDrift(column=PREDICTION, method=params.num_method, threshold=params.threshold_for(PREDICTION)),
        MeanValue(column=PREDICTION),
    ]
    definition = _definition(kinds, [PREDICTION])
    return Report(metrics, tags=tags or ["drift"]).run(
        Dataset.from_pandas(token_counts(current[needed], kinds), data_definition=definition),
        Dataset.from_pandas(token_counts(reference[needed], kinds), data_definition=definition),
        timestamp=timestamp,
    )


def summarize(
    snapshot: Snapshot,
    kinds: dict[str, Kind],
    params: DriftParams,
    max_drifted_share: float,
    reference: pd.DataFrame,
) -> dict[str, Any]:
    """The snapshot as the plain dict of ``drift.json`` (per column, share, prediction drift).

    Raises:
        ConfigError: Evidently's drifted-column count disagrees with the per-column verdicts
            (the two were configured differently; a bug, never a silent inconsistency).
    """
    values = metric_values(snapshot)
    columns = {}
    for column, kind in kinds.items():
        score = float(values[f"ValueDrift:{column}"])
        columns[column] = {
            "kind": kind,
            "method": _method(kind, params),
            "threshold": params.threshold_for(column),
            "score": score,
            "drifted": score >= params.threshold_for(column),
        }
    drifted = [c for c, v in columns.items() if v["drifted"]]
    counted = int(values["DriftedColumnsCount"]["count"])
    if counted != len(drifted):
        raise ConfigError(
            f"drift: Evidently counted {counted} drifted columns, the per-column verdicts {len(drifted)}"
        )
    share = len(drifted) / len(columns)
    prediction_score = float(values[f"ValueDrift:{PREDICTION}"])
    return {
        "rows": {"reference": len(reference), "current": int(values["RowCount"])},
        "columns": columns,
        "drifted_columns": drifted,
        "drifted_share": share,
        "max_drifted_share": max_drifted_share,
        "dataset_drift": share > max_drifted_share,
        "prediction": {
            "column": PREDICTION,
            "method": params.num_method,
            "threshold": params.threshold_for(PREDICTION),
            "score": prediction_score,
            "drifted": prediction_score >= params.threshold_for(PREDICTION),
            "mean_reference": float(reference[PREDICTION].mean()),
            "mean_current": finite(values[f"MeanValue:{PREDICTION}"]),
        },
    }


def expired_views(
    spec: ProblemSpec, newest: Mapping[str, datetime | None], now: datetime
) -> dict[str, dict[str, Any]]:
    """The online feature views whose newest stored row is older than their TTL at ``now``: the
    online store serves every request their defaults (reason ``expired``).

    Args:
        spec: the problem spec (views, TTLs, fields).
        newest: view name -> the newest ``event_timestamp`` of its feature table (what was
            materialized); a view left out, or None, is not judged.
        now: when the traffic is served (the monitoring run).
    """
    out = {}
    for view in spec.feature_views:
        stamp = newest.get(view.name)
        if not view.online or view.ttl <= timedelta(0) or stamp is None:
            continue
        age = now - stamp
        if age > view.ttl:
            out[view.name] = {
                "ttl_s": view.ttl.total_seconds(),
                "newest_row": stamp.isoformat(),
                "age_s": round(age.total_seconds(), 1),
                "fields": [name for f, c in view.fields.items() for name in c.flat(f)],
            }
    return out


def served_defaults(spec: ProblemSpec, views: Collection[str]) -> dict[str, Any]:
    """Model input column -> the spec default the server gives it, for every field of ``views``."""
    return {
        name: column.default
        for view in spec.feature_views
        if view.name in views
        for field, spec_column in view.fields.items()
        for name, column in spec_column.flat(field).items()
    }


def reference_as_served(reference: pd.DataFrame, defaults: Mapping[str, Any]) -> pd.DataFrame:
    """``reference`` with each column of ``defaults`` set to its default (same dtype): the training
    rows as the online store would serve them now."""
    out = reference.copy()
    for column, value in defaults.items():
        if column in out:
            out[column] = pd.Series(value, index=out.index).astype(out[column].dtype)
    return out


def span(value: timedelta) -> str:
    """A duration in its largest whole unit: ``1d``, ``1h``, ``90s``."""
    total = int(value.total_seconds())
    unit, size = next((u, n) for u, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)) if total % n == 0)
    return f"{total // size}{unit}"


def headline(summary: Mapping[str, Any], reference_span: timedelta) -> str:
    """The drift report's first lines as HTML: the window, the verdict and the limit it was held
    to, and the views compared as served (expired)."""
    window = summary.get("window") or {}
    rows = summary.get("rows") or {}
    times = f"{window.get('start', '?')[:19]} to {window.get('end', '?')[:19]} UTC"
    lines = [
        f"Window: {times} ({window.get('length', '?')}), {rows.get('current', 0)} served requests, "
        f"against the training set's last {span(reference_span)} ({rows.get('reference', 0)} rows)."
    ]
    if "drifted_share" not in summary:
        verdict = f"No verdict: {summary.get('status', '')}"
    else:
        drifted = summary["drifted_columns"]
        limit, share = summary["max_drifted_share"], summary["drifted_share"]
        verdict = (
            f"{'Drift' if summary['dataset_drift'] else 'No drift'}: {len(drifted)} of "
            f"{len(summary['columns'])} columns drifted ({share:.0%}"
            f"{'; ' + ', '.join(drifted) if drifted else ''}); the limit is {limit:.0%} "
            "(the spec's drift.max_drifted_share; a column drifts at distance >= its threshold)."
        )
        prediction = summary["prediction"]
        lines.append(
            f"Score: distance {prediction['score']:.3f} (threshold {prediction['threshold']}), "
            f"{'drifted' if prediction['drifted'] else 'not drifted'}."
        )
    for view, info in (summary.get("expired_views") or {}).items():
        lines.append(
            f"{view}: the online store's newest row is {info['age_s'] / 3600:.1f} h old, past its "
            f"{info['ttl_s'] / 3600:g} h TTL, so every request gets the defaults of "
            f"{', '.join(info['fields'])}; the reference gets them too."
        )
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        '<section id="mlsd-headline" style="font-family:sans-serif;padding:12px 16px;'
        'border-bottom:1px solid #ccc"><h2 style="margin:0 0 6px">'
        f'{html.escape(verdict)}</h2><ul style="margin:0">{items}</ul></section>'
    )


def with_headline(page: str, head: str) -> str:
    """``page`` (a whole HTML document) with ``head`` first in its body."""
    at = page.find(">", page.find("<body")) + 1 if "<body" in page else 0
    return page[:at] + head + page[at:]
