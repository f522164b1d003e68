"""Markdown building blocks of the design document: tables, lists, numbers, durations.

Every value is formatted the same way wherever it appears, so the document is deterministic and a
number read from a report can be found again in the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from mlsd.spec import ColumnSpec

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def number(value: Any) -> str:
    """A scale number: integers with thousands separators, other floats as given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,}"


def metric(value: Any) -> str:
    """A metric value: four decimals (as the evaluation report prints them); a dash when absent."""
    return "–" if value is None else f"{value:.4f}"


def seconds(value: Any) -> str:
    """A wall time in seconds, as measured (rounded to 0.1 s)."""
    return "–" if value is None else f"{value:.1f} s"


def duration(value: timedelta) -> str:
    """A spec duration in its largest whole unit (``1d``, ``30m``); ``0s`` never expires."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s (never expires)"
    unit, size = next((u, s) for u, s in _UNITS if total % s == 0)
    return f"{total // size}{unit}"


def code(value: Any) -> str:
    return f"`{value}`"


def codes(values: Iterable[Any]) -> str:
    return ", ".join(code(v) for v in values) or "none"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table; ``|`` inside cells is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return lines


def bullets(items: Iterable[str]) -> list[str]:
    return [f"- {item}" for item in items]


def missing(field: str, what: str) -> str:
    """The line that stands where the spec says nothing, naming the field that would say it."""
    return f"_Not stated: add `{field}` ({what}) to the problem spec (conf/base/problem.yml)._"


def not_set(key: str) -> str:
    """The text that stands where a run parameter is absent, naming the parameter."""
    return f"_not set (`{key}` in conf/base/parameters.yml)_"


def param(parameters: Mapping[str, Any], key: str) -> Any:
    """The run parameter at dotted ``key`` (``training.tune.num_samples``), or None when absent."""
    value: Any = parameters
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def param_text(parameters: Mapping[str, Any], key: str) -> str:
    """The run parameter at ``key`` in code font, or the line naming it when absent."""
    value = param(parameters, key)
    return not_set(key) if value is None else code(value)


def constraint(column: ColumnSpec) -> str:
    """A column's constraints in words: ``int64 in [1, 10]``, ``string one of a, b``."""
    parts: list[str] = [column.dtype if column.dim is None else f"{column.dtype} vector of {column.dim}"]
    if column.unique:
        parts.append("unique")
    if column.nullable:
        parts.append("nullable")
    if column.min is not None or column.max is not None:
        low = "-inf" if column.min is None else number(column.min)
        high = "inf" if column.max is None else number(column.max)
        parts.append(f"in [{low}, {high}]")
    if column.allowed is not None:
        parts.append("one of " + ", ".join(str(v) for v in column.allowed))
    if column.references is not None:
        parts.append(f"→ {column.references}")
    if column.text is not None:
        parts.append(f"free text, at most {column.text.max_chars} characters")
    return " ".join(parts)
