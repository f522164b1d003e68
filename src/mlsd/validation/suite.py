"""Expectation suites derived from the spec, as plain data (no Great Expectations import).

A :class:`Check` is one expectation by its Great Expectations name with its keyword arguments.
Column constraints map one-to-one onto expectations; ``references`` becomes an in-set check
against the referenced column's values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from mlsd.spec import ColumnSpec, ProblemSpec

TRAINING_SET = "training_set"

# Checks mlsd runs itself with pandas, in the same report format: Great Expectations' type check
# rejects tz-aware timestamps, and an in-set check against a 200k-value set takes ~30 s there.
DTYPE_CHECK = "expect_column_dtype"
REFERENCE_CHECK = "expect_column_values_to_be_in_column"


class Check(NamedTuple):
    """One expectation: its Great Expectations name and keyword arguments."""

    type: str
    kwargs: dict[str, Any]

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


def column_checks(name: str, col: ColumnSpec) -> list[Check]:
    """The expectations one column's constraints imply, in a fixed, readable order."""
    checks = [
        Check("expect_column_to_exist", {"column": name}),
        Check(DTYPE_CHECK, {"column": name, "dtype": col.dtype}),
    ]
    if not col.nullable:
        checks.append(Check("expect_column_values_to_not_be_null", {"column": name}))
    if col.unique:
        checks.append(Check("expect_column_values_to_be_unique", {"column": name}))
    if col.min is not None or col.max is not None:
        checks.append(
            Check(
                "expect_column_values_to_be_between",
                {"column": name, "min_value": col.min, "max_value": col.max},
            )
        )
    if col.allowed is not None:
        checks.append(
            Check("expect_column_values_to_be_in_set", {"column": name, "value_set": list(col.allowed)})
        )
    if col.references is not None:
        checks.append(Check(REFERENCE_CHECK, {"column": name, "references": col.references}))
    return checks


def _extra(spec: ProblemSpec, table: str) -> list[Check]:
    return [Check(e.type, dict(e.kwargs)) for e in spec.expectations if e.table == table]


def table_suite(spec: ProblemSpec, table: str) -> list[Check]:
    """Every check for one spec table: row count, column constraints, extra expectations."""
    tspec = spec.tables[table]
    checks = [Check("expect_table_row_count_to_be_between", {"min_value": tspec.min_rows, "max_value": None})]
    for field, spec_col in tspec.columns.items():
        for name, col in spec_col.flat(field).items():
            checks += column_checks(name, col)
    return checks + _extra(spec, table)


def training_set_suite(spec: ProblemSpec, n_events: int) -> list[Check]:
    """Checks for the point-in-time training set: one row per event, no key or feature missing.

    Missing features were filled with the spec defaults before this runs (the same defaults the
    server uses), so a null here means the join or the fill is broken.
    """
    events = spec.tables[spec.events_table]
    keep = {
        *spec.serving.entity_keys,
        *spec.serving.context,
        *spec.label.columns(),
        *spec.label.truth_columns(),
    }
    checks = [Check("expect_table_row_count_to_equal", {"value": n_events})]
    for field, spec_col in events.columns.items():
        if field in keep:
            for name, col in spec_col.flat(field).items():
                checks += column_checks(name, col.model_copy(update={"references": None}))
    for name, col in spec.feature_fields().items():
        checks += column_checks(name, col.model_copy(update={"nullable": False}))
    return checks + _extra(spec, TRAINING_SET)
