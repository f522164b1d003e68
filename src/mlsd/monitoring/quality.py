"""Online model quality per serving variant, from served predictions joined to feedback.

One Evidently report per variant (stable, canary) over its labelled requests: ROC AUC, log loss,
mean score and observed rate; ``calibration_ratio`` is mean score / observed rate (1 is
calibrated; above 1 the model over-predicts). Each snapshot is tagged ``quality`` with the
variant in its metadata, so the workspace dashboard draws one line per variant.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlsd.monitoring.snapshots import finite, metric_values

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

QUALITY_TAG = "quality"


def quality_report(labelled: pd.DataFrame, variant: str, timestamp: datetime | None = None) -> Snapshot:
    """Evidently quality metrics of one variant's labelled requests (``score``, ``label``), dated
    ``timestamp`` on the dashboards (default: now)."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import LogLoss, MeanValue, RocAuc, RowCount

    frame = pd.DataFrame({"score": labelled["score"].astype(float), "label": labelled["label"].astype(int)})
    definition = DataDefinition(
        numerical_columns=["score", "label"],
        classification=[BinaryClassification(target="label", prediction_probas="score")],
    )
    metrics = [RowCount(), RocAuc(), LogLoss(), MeanValue(column="score"), MeanValue(column="label")]
    report = Report(metrics, tags=[QUALITY_TAG], metadata={"variant": variant})
    return report.run(Dataset.from_pandas(frame, data_definition=definition), None, timestamp=timestamp)


def log_loss_se(labelled: pd.DataFrame) -> float | None:
    """Standard error of the mean per-request log loss of ``labelled`` (``score``, ``label``): how
    far the online log loss may be from the model's true one by chance. At a 0.5% fraud rate the
    mean rests on a dozen positives per 2,000 requests and moves by half its value between samples."""
    if len(labelled) < 2:
        return None
    p = np.clip(labelled["score"].to_numpy(dtype=float), 1e-7, 1 - 1e-7)
    y = labelled["label"].to_numpy(dtype=float)
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(losses.std(ddof=1) / np.sqrt(len(losses)))


def quality_summary(
    snapshot: Snapshot, requests: int, labelled: pd.DataFrame | None = None
) -> dict[str, Any]:
    """One variant's numbers for ``drift.json``; ``None`` where undefined (AUC with one class).
    With the ``labelled`` rows, also the standard error of the log loss (``log_loss_se``)."""
    values = metric_values(snapshot)
    mean_score, observed = finite(values["MeanValue:score"]), finite(values["MeanValue:label"])
    return {
        "requests": requests,
        "labelled": int(values["RowCount"]),
        "auc": finite(values["RocAuc"]),
        "log_loss": finite(values["LogLoss"]),
        "log_loss_se": None if labelled is None else log_loss_se(labelled),
        "mean_score": mean_score,
        "observed_rate": observed,
        "calibration_ratio": mean_score / observed if mean_score is not None and observed else None,
    }


def quality_by_variant(
    joined: pd.DataFrame, min_labelled: int = 1, timestamp: datetime | None = None
) -> dict[str, tuple[Snapshot, dict[str, Any]]]:
    """Per variant with at least ``min_labelled`` labelled requests: its snapshot and summary."""
    out: dict[str, tuple[Snapshot, dict[str, Any]]] = {}
    for variant, rows in joined.groupby("variant", sort=True):
        labelled = rows.dropna(subset=["label"])
        if len(labelled) >= min_labelled:
            snapshot = quality_report(labelled, str(variant), timestamp)
            out[str(variant)] = (snapshot, quality_summary(snapshot, len(rows), labelled))
    return out


def hit_rate_by_variant(
    joined: pd.DataFrame, min_labelled: int = 1, timestamp: datetime | None = None, rate: str = "hit_rate"
) -> dict[str, tuple[Snapshot, dict[str, Any]]]:
    """For scores that are not probabilities: per variant, the share of labelled requests with
    ``label`` 1 (reported as ``rate``) and the mean score. Log loss and AUC do not apply.

    A ranked list's ``hit_rate``: the share of lists engaged with, with the mean top score. An
    uplift score's ``observed_rate``: the conversion rate of scored (untreated) users, with the
    mean estimated effect.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, RowCount

    out: dict[str, tuple[Snapshot, dict[str, Any]]] = {}
    for variant, rows in joined.groupby("variant", sort=True):
        labelled = rows.dropna(subset=["label"])
        if len(labelled) < min_labelled:
            continue
        frame = pd.DataFrame(
            {"score": labelled["score"].astype(float), "label": labelled["label"].astype(float)}
        )
        definition = DataDefinition(numerical_columns=["score", "label"])
        report = Report(
            [RowCount(), MeanValue(column="label"), MeanValue(column="score")],
            tags=[QUALITY_TAG],
            metadata={"variant": str(variant)},
        )
        snapshot = report.run(
            Dataset.from_pandas(frame, data_definition=definition), None, timestamp=timestamp
        )
        values = metric_values(snapshot)
        out[str(variant)] = (
            snapshot,
            {
                "requests": len(rows),
                "labelled": int(values["RowCount"]),
                rate: finite(values["MeanValue:label"]),
                "mean_score": finite(values["MeanValue:score"]),
            },
        )
    return out
