"""How many Great Expectations checks the spec implies, by kind, for the design document.

The suites themselves are built by :mod:`mlsd.validation.suite` (a stage this document does not
import); the rules are the same: each column gets an existence and a dtype check, plus one check
per constraint it declares, each table a row-count check, and the spec's extra expectations join
the suite of their table. tests/test_design.py keeps the two in step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mlsd.spec import ColumnSpec, ProblemSpec

TRAINING_SET = "training_set"

KINDS = {
    "row_count": "row count",
    "exists": "column exists",
    "dtype": "dtype",
    "not_null": "not null",
    "unique": "unique",
    "between": "range",
    "in_set": "allowed values",
    "references": "foreign key",
    "extra": "extra (spec `expectations`)",
}
"""Kinds of check in the order the document lists them, with their names there."""


def _columns(columns: Iterable[ColumnSpec]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for col in columns:
        n = col.dim or 1  # a vector is checked element by element
        counts.update({"exists": n, "dtype": n})
        counts["not_null"] += n * (not col.nullable)
        counts["unique"] += n * col.unique
        counts["between"] += n * (col.min is not None or col.max is not None)
        counts["in_set"] += n * (col.allowed is not None)
        counts["references"] += n * (col.references is not None)
    return counts


def _extra(spec: ProblemSpec, table: str) -> int:
    return sum(e.table == table for e in spec.expectations)


def table_checks(spec: ProblemSpec, table: str) -> Counter[str]:
    """Checks of one spec table (raw or events) by kind."""
    counts = _columns(spec.tables[table].columns.values())
    counts.update(row_count=1, extra=_extra(spec, table))
    return +counts


def training_set_checks(spec: ProblemSpec) -> Counter[str]:
    """Checks of the point-in-time training set by kind: the events columns the model and the
    evaluation use (foreign keys dropped: the rows are already validated events) and every feature
    (never null: missing values were filled with the spec defaults)."""
    events = spec.tables[spec.events_table].columns
    keep = {
        *spec.serving.entity_keys,
        *spec.serving.context,
        *spec.label.columns(),
        *spec.label.truth_columns(),
    }
    used = [col.model_copy(update={"references": None}) for name, col in events.items() if name in keep]
    features = [col.model_copy(update={"nullable": False}) for col in spec.feature_fields().values()]
    counts = _columns([*used, *features])
    counts.update(row_count=1, extra=_extra(spec, TRAINING_SET))
    return +counts


def describe(counts: Counter[str]) -> str:
    """``"52 checks: 4 row count, 20 column exists, ..."`` in :data:`KINDS` order."""
    parts = [f"{counts[kind]} {name}" for kind, name in KINDS.items() if counts[kind]]
    return f"{sum(counts.values())} checks: " + ", ".join(parts)
