"""Sections 1 and 2 of the design document: the requirements and the data pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlsd.design import checks
from mlsd.design.markdown import bullets, code, codes, constraint, duration, missing, number, table
from mlsd.spec import ProblemSpec, TableSpec


def _classes(spec: ProblemSpec) -> str:
    """A multi-label problem's classes, each its own 0/1 label column: `` per class (a, b)``."""
    classes = spec.label.classes
    return "" if classes is None else f" per class ({codes(classes)}: one 0/1 column each)"


def requirements(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """1. Clarify requirements: the question, objective, task, scale, latency and constraints."""
    design = spec.design
    objective = design.objective if design else missing("design.objective", "the business objective")
    lines = [
        "## 1. Clarify requirements",
        "",
        f"- **Question:** {spec.question}",
        f"- **Business objective:** {objective}",
        f"- **ML task:** {code(spec.task)}: predict {code(spec.label.column)}{_classes(spec)} "
        f"of the {code(spec.label.table)} table.",
        f"- **Online metric:** {code(spec.online_metric)}",
        f"- **Latency budget:** {number(spec.serving.latency_budget_ms)} ms per request "
        "(`serving.latency_budget_ms`).",
        "",
        "### Scale",
        "",
    ]
    if design and design.scale:
        rows = [(name.replace("_", " "), number(value)) for name, value in design.scale.items()]
        lines += table(["assumption", "value"], rows)
    else:
        lines.append(missing("design.scale", "assumed production numbers, e.g. peak_qps"))
    lines += ["", "### Constraints", ""]
    if design and design.constraints:
        lines += bullets(design.constraints)
    else:
        lines.append(missing("design.constraints", "requirements beyond the spec's numbers"))
    return lines


def _table_line(name: str, tspec: TableSpec) -> str:
    when = f"event time {code(tspec.timestamp)}" if tspec.timestamp else "no event time"
    head = f"**{name}** ({tspec.layer}; {when}; min_rows {number(tspec.min_rows)})"
    columns = []
    for cname, col in tspec.columns.items():
        note = f": {col.description}" if col.description else ""
        columns.append(f"{code(cname)} {constraint(col)}{note}")
    return head + ": " + "; ".join(columns)


def _validation(spec: ProblemSpec) -> list[str]:
    lines = ["### Validation (Great Expectations)", ""]
    for name in spec.tables:
        lines.append(f"- {code(name)}: {checks.describe(checks.table_checks(spec, name))}")
    lines.append(f"- {code(checks.TRAINING_SET)}: {checks.describe(checks.training_set_checks(spec))}")
    lines += [
        "",
        "Every check comes from a column constraint, a table's `min_rows` or the spec's "
        "`expectations`. A failed check stops the run before anything downstream is written, "
        "with one line per failure and an HTML report in data/08_reporting.",
    ]
    return lines


def _feature_views(spec: ProblemSpec) -> list[str]:
    rows = []
    for fv in spec.feature_views:
        fields = ", ".join(f"{code(n)} ({c.dtype}, default {c.default})" for n, c in fv.fields.items())
        rows.append(
            (code(fv.name), codes(fv.entities), duration(fv.ttl), "yes" if fv.online else "no", fields)
        )
    return table(["view", "entities", "ttl", "online", "fields (dtype, default when missing)"], rows)


def data_pipeline(spec: ProblemSpec, parameters: Mapping[str, Any]) -> list[str]:
    """2. Data pipeline: tables, entities, feature views, validation, the training set."""
    lines = ["## 2. Data pipeline", "", "### Tables", ""]
    lines += bullets(_table_line(name, tspec) for name, tspec in spec.tables.items())
    lines += ["", "### Entities and join keys", ""]
    lines += table(
        ["entity", "join key", "dtype", "description"],
        [(e.name, code(e.join_key), e.dtype, e.description) for e in spec.entities],
    )
    lines += ["", "### Feature views (Feast)", ""]
    lines += _feature_views(spec)
    lines += ["", *_validation(spec), "", "### Point-in-time training set", ""]
    online = [fv.name for fv in spec.feature_views if fv.online]
    lines += [
        f"Each {code(spec.events_table)} row is joined to every feature view as of its event time "
        f"{code(spec.label.timestamp)} (Feast `get_historical_features`): a feature row is visible "
        "only if it is not newer than the event and not older than the view's ttl, so no feature "
        "leaks the future. Missing values take the spec defaults, the same the server fills in. "
        f"After the training set passed its checks, the online views ({codes(online)}) are "
        "materialized to the online store.",
    ]
    return lines
