"""Run expectation suites with Great Expectations (imported lazily: it costs seconds)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mlsd.errors import DataValidationError, SpecError
from mlsd.validation.suite import DTYPE_CHECK, REFERENCE_CHECK, Check

NATIVE_CHECKS = {DTYPE_CHECK, REFERENCE_CHECK}

MAX_EXAMPLES = 5


def _expectation_class(name: str) -> Any:
    import great_expectations.expectations as gxe

    class_name = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gxe, class_name, None)
    if cls is None:
        raise SpecError(f"expectations: {name!r} is not a Great Expectations expectation ({class_name})")
    return cls


def _plain(value: Any) -> Any:
    """JSON-safe scalars (numpy, Timestamps, NaN) for the report."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # NaN, None, pd.NA, NaT
        return None
    if hasattr(value, "item"):
        return _plain(value.item())
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    return value


def _new_row(table: str, check: Check, **found: Any) -> dict[str, Any]:
    """One report row: which check, and what was found (unset findings are empty)."""
    kwargs = {k: v for k, v in check.kwargs.items() if k != "value_set" or len(v) <= 20}
    row: dict[str, Any] = {
        "table": table,
        "expectation": check.type,
        "column": check.column,
        "kwargs": {
            k: _plain(v) if not isinstance(v, list) else [_plain(x) for x in v] for k, v in kwargs.items()
        },
        "success": False,
        "element_count": None,
        "unexpected_count": None,
        "unexpected_percent": None,
        "examples": [],
        "observed_value": None,
        "error": None,
    }
    return {**row, **found}


def _row(table: str, check: Check, result: Any) -> dict[str, Any]:
    body = result.result or {}
    error = None
    if result.exception_info and result.exception_info.get("raised_exception"):
        error = str(result.exception_info.get("exception_message", "")).splitlines()[0][:300]
    return _new_row(
        table,
        check,
        success=bool(result.success),
        element_count=_plain(body.get("element_count")),
        unexpected_count=_plain(body.get("unexpected_count")),
        unexpected_percent=_plain(body.get("unexpected_percent")),
        examples=[_plain(x) for x in (body.get("partial_unexpected_list") or [])[:MAX_EXAMPLES]],
        observed_value=_plain(body.get("observed_value")),
        error=error,
    )


_DTYPE_KINDS = {"int64": "iu", "float32": "f", "float64": "f", "bool": "b", "timestamp": "M"}


def _native_row(table: str, check: Check, frames: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Run a dtype or reference check with pandas and report it like a GX result."""
    frame, column = frames[table], check.column
    row = _new_row(table, check, element_count=len(frame))
    if column not in frame:
        row["error"] = f"column {column!r} is missing"
        return row
    series = frame[column]
    if check.type == DTYPE_CHECK:
        want = check.kwargs["dtype"]
        row["observed_value"] = str(series.dtype)
        if want == "string":
            non_null = series.dropna()
            row["success"] = series.dtype.kind in "OU" and all(
                isinstance(v, str) for v in non_null.head(1000)
            )
            row["success"] = row["success"] or str(series.dtype).startswith("string")
        elif want == "timestamp":
            row["success"] = series.dtype.kind == "M" and getattr(series.dtype, "tz", None) is not None
            row["observed_value"] += "" if row["success"] else " (need tz-aware UTC timestamps)"
        else:
            row["success"] = series.dtype.kind in _DTYPE_KINDS[want]
        return row
    rtable, rcol = check.kwargs["references"].split(".")
    if rtable not in frames or rcol not in frames[rtable]:
        row["error"] = f"referenced column {rtable}.{rcol} is missing"
        return row
    orphans = series[series.notna() & ~series.isin(frames[rtable][rcol])]
    row.update(
        success=orphans.empty,
        unexpected_count=len(orphans),
        unexpected_percent=100.0 * len(orphans) / max(len(frame), 1),
        examples=[_plain(x) for x in orphans.head(MAX_EXAMPLES)],
    )
    return row


def validate_frames(
    stage: str, frames: Mapping[str, pd.DataFrame], suites: Mapping[str, Sequence[Check]]
) -> dict[str, Any]:
    """Validate each frame against its suite; return a JSON-ready report (never raises on data).

    Returns:
        ``{"stage", "success", "validated_at", "tables": {name: {"rows"}}, "results": [...],
        "failures": [one line per failed expectation]}``.
    """
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas(f"mlsd_{stage}").add_dataframe_asset("frame")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    rows: list[dict[str, Any]] = []
    for table, checks in suites.items():
        frame = frames[table]
        # GX may reorder results, so each expectation carries its index in ``meta``.
        expectations = [
            _expectation_class(c.type)(**c.kwargs, meta={"i": i})
            for i, c in enumerate(checks)
            if c.type not in NATIVE_CHECKS
        ]
        suite = gx.ExpectationSuite(name=f"{stage}.{table}", expectations=expectations)
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format="SUMMARY")
        by_index = {r.expectation_config.meta["i"]: r for r in result.results if r.expectation_config}
        rows += [
            _native_row(table, check, frames) if i not in by_index else _row(table, check, by_index[i])
            for i, check in enumerate(checks)
        ]
    failures = [failure_line(r) for r in rows if not r["success"]]
    return {
        "stage": stage,
        "success": not failures,
        "validated_at": datetime.now(UTC).isoformat(),
        "tables": {t: {"rows": len(frames[t]), "checks": len(c)} for t, c in suites.items()},
        "results": rows,
        "failures": failures,
    }


def failure_line(row: Mapping[str, Any]) -> str:
    """One line naming the table, column, expectation and what was found."""
    where = f"{row['table']}.{row['column']}" if row["column"] else row["table"]
    if row["error"]:
        found = f"could not run: {row['error']}"
    elif row["unexpected_count"] is not None:
        found = f"{row['unexpected_count']} unexpected of {row['element_count']} rows"
        if row["examples"]:
            found += f", e.g. {row['examples']}"
    else:
        found = f"observed {row['observed_value']!r}"
    args = {k: v for k, v in row["kwargs"].items() if k != "column"}
    return f"{where}: {row['expectation']}{args if args else ''} failed: {found}"


def raise_if_failed(report: Mapping[str, Any]) -> None:
    """Raise :class:`DataValidationError` listing every failure in the report."""
    if not report["success"]:
        raise DataValidationError(f"{report['stage']} validation", report["failures"])
