"""Data shaping for training: model frames in the spec's input order, labels, a time split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from mlsd.errors import TrainingError
from mlsd.spec import ModelInput, ProblemSpec


def model_frame(inputs: list[ModelInput], frame: pd.DataFrame) -> pd.DataFrame:
    """The model's inputs in order: numbers as float32 (what ONNX is fed), strings as str objects.

    Raises:
        TrainingError: a model input is missing from ``frame`` or has missing values.
    """
    lacking = [i.name for i in inputs if i.name not in frame]
    if lacking:
        raise TrainingError(f"model inputs {lacking} are not columns of the training data")
    out = pd.DataFrame(index=frame.index)
    for item in inputs:
        column = frame[item.name]
        if column.isna().any():
            raise TrainingError(
                f"model input {item.name!r} has {int(column.isna().sum())} missing values; "
                "the training set must carry the spec defaults"
            )
        out[item.name] = column.astype(str) if item.dtype == "string" else column.astype(np.float32)
    return out


def labels(spec: ProblemSpec, frame: pd.DataFrame) -> np.ndarray:
    """The label column as int64 ``[N]``, or a multilabel problem's ``[N, classes]``."""
    if spec.label.classes is not None:
        return frame[spec.label.columns()].to_numpy(dtype=np.int64)
    return frame[spec.label.column].to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class TimeSplit:
    """Rows before ``valid_start`` train, rows before ``holdout_start`` tune, the rest evaluate."""

    train: pd.DataFrame
    valid: pd.DataFrame
    holdout: pd.DataFrame
    valid_start: pd.Timestamp
    holdout_start: pd.Timestamp


def time_split(frame: pd.DataFrame, ts: str, holdout: timedelta, validation: timedelta) -> TimeSplit:
    """Split by event time, never by row: the model is judged on a period after all it saw.

    Raises:
        TrainingError: a row has no timestamp, or any of the three parts would be empty.
    """
    missing = int(frame[ts].isna().sum())
    if missing:
        raise TrainingError(f"{missing} rows have no {ts!r} timestamp; a time split cannot place them")
    end = frame[ts].max()
    holdout_start = end - pd.Timedelta(holdout)
    valid_start = holdout_start - pd.Timedelta(validation)
    ordered = frame.sort_values([ts], kind="stable").reset_index(drop=True)
    parts = {
        "train": ordered[ordered[ts] < valid_start],
        "valid": ordered[(ordered[ts] >= valid_start) & (ordered[ts] < holdout_start)],
        "holdout": ordered[ordered[ts] >= holdout_start],
    }
    empty = [name for name, part in parts.items() if part.empty]
    if empty:
        raise TrainingError(
            f"time split of {len(frame)} rows ({frame[ts].min()} .. {end}) leaves {empty} empty; "
            "shorten training.holdout / training.validation or generate more days"
        )
    return TimeSplit(**parts, valid_start=valid_start, holdout_start=holdout_start)


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of a frame (values, columns and order): the training data's version."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
