"""Monitoring: drift of served traffic (Evidently), online quality per variant, the retraining
trigger, the Prometheus exporter of the drift report, and the automated canary analysis."""

from mlsd.monitoring.canary import ArmStats, CanaryParams, Verdict, analyze_canary
from mlsd.monitoring.drift import DriftParams, drift_report, summarize
from mlsd.monitoring.exporter import DRIFT_METRICS, serve_drift_metrics
from mlsd.monitoring.quality import quality_by_variant
from mlsd.monitoring.retrain import retrain_reasons

__all__ = [
    "DRIFT_METRICS",
    "ArmStats",
    "CanaryParams",
    "DriftParams",
    "Verdict",
    "analyze_canary",
    "drift_report",
    "quality_by_variant",
    "retrain_reasons",
    "serve_drift_metrics",
    "summarize",
]
