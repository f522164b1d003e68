"""The serving logs as frames: served predictions (features flattened) and delayed feedback.

The prediction log is JSONL records ``{request_id, ts, variant, model_tag, served, fallback,
score, latency_ms, features: {...}, missing: [...]}`` (mlsd.serving.prediction_log); feedback is
JSONL ``{request_id, label, ...}`` written by ``mlsd simulate`` or by the application.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlsd.errors import ConfigError

RECORD_COLUMNS = [
    "request_id", "ts", "variant", "model_tag", "fallback", "score", "stable_score", "latency_ms",
    "model_ms", "model_cpu_ms",
]  # fmt: skip


def served_frame(records: Iterable[dict[str, Any]], since: datetime | None = None) -> pd.DataFrame:
    """Served records (shadow scores left out) at or after ``since``: one row per request, the
    record's fields plus every model input the request was scored with, and ``n_missing``."""
    rows = []
    for r in records:
        if not r.get("served", True):
            continue
        row = {k: r.get(k) for k in RECORD_COLUMNS}
        row.update(r.get("features") or {})
        row["n_missing"] = len(r.get("missing") or [])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else [*RECORD_COLUMNS, "n_missing"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["ts"] >= pd.Timestamp(since)]
    return frame.reset_index(drop=True)


def feedback_columns(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    """``request_id`` (as text) and ``label`` of a feedback table read from ``source``.

    Raises:
        ConfigError: a column is missing (named, with the file).
    """
    missing = {"request_id", "label"} - set(frame.columns)
    if missing:
        raise ConfigError(f"{source}: feedback needs columns request_id and label; missing {sorted(missing)}")
    return frame[["request_id", "label"]].astype({"request_id": str})


FEEDBACK_SUFFIXES = (".jsonl", ".csv", ".parquet")


def _jsonl(path: Path) -> pd.DataFrame:
    """A JSONL file as a frame, read line by line so a bad line is named (file:line)."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg}): {line[:80]!r}") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            label = record.get("label")
            if label is not None and (isinstance(label, bool) or not isinstance(label, int | float)):
                raise ConfigError(f"{path}:{number}: label must be a number (1/0), got {label!r}")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _feedback_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"request_id": str})
    return _jsonl(path)


def feedback_files(path: Path) -> list[Path]:
    """The feedback files ``path`` names: itself, or a directory's ``*.jsonl``, ``*.csv`` and
    ``*.parquet`` files in name order (the simulator's names sort by time).

    Raises:
        ConfigError: ``path`` does not exist.
    """
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in FEEDBACK_SUFFIXES and p.is_file())
    if not path.exists():
        raise ConfigError(
            f"{path}: no such feedback file or directory (`mlsd simulate` writes feedback into the "
            "project's serving.feedback_log directory, data/07_model_output/feedback/, the default)"
        )
    return [path]


def read_feedback(path: Path, missing_ok: bool = True) -> pd.DataFrame:
    """Every feedback record of ``path`` (a file, or a directory of them: JSONL, CSV or parquet);
    the latest label wins per request. With ``missing_ok`` a path that does not exist yet (no
    feedback has arrived) holds no records.

    Raises:
        ConfigError: ``path`` does not exist (unless ``missing_ok``), a line is not a JSON
            object with a numeric label (file and line named), or a file lacks ``request_id`` or
            ``label``.
    """
    frames = []
    for file in [] if missing_ok and not path.exists() else feedback_files(path):
        frame = _feedback_table(file)
        if frame.empty:
            continue
        frames.append(feedback_columns(frame, file))
    if not frames:
        return pd.DataFrame({"request_id": pd.Series(dtype=str), "label": pd.Series(dtype="int64")})
    return pd.concat(frames).drop_duplicates("request_id", keep="last").reset_index(drop=True)


def with_feedback(served: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """``served`` with a ``label`` column (NaN until the outcome is known)."""
    return served.merge(feedback[["request_id", "label"]], on="request_id", how="left")
