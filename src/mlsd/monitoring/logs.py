"""The serving logs as frames: served predictions (features flattened) and delayed feedback.

The prediction log is JSONL records ``{request_id, ts, variant, model_tag, served, fallback,
score, latency_ms, features: {...}, missing: [...]}`` (mlsd.serving.prediction_log); feedback is
JSONL ``{request_id, label, ...}`` written by ``mlsd simulate`` or by the application.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from mlsd.errors import ConfigError

RECORD_COLUMNS = [
    "request_id", "ts", "variant", "model_tag", "fallback", "score", "stable_score", "latency_ms",
    "model_ms",
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


def read_feedback(folder: Path) -> pd.DataFrame:
    """Every feedback record under ``folder`` (``*.jsonl``); the latest label wins per request.

    Raises:
        ConfigError: a feedback file lacks ``request_id`` or ``label``.
    """
    frames = []
    for path in sorted(folder.glob("*.jsonl")):
        frame = pd.read_json(path, lines=True, dtype={"request_id": str})
        if frame.empty:
            continue
        frames.append(feedback_columns(frame, path))
    if not frames:
        return pd.DataFrame({"request_id": pd.Series(dtype=str), "label": pd.Series(dtype="int64")})
    return pd.concat(frames).drop_duplicates("request_id", keep="last").reset_index(drop=True)


def with_feedback(served: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """``served`` with a ``label`` column (NaN until the outcome is known)."""
    return served.merge(feedback[["request_id", "label"]], on="request_id", how="left")
