"""Evaluation: offline metrics, quality gates against baseline and oracle, and the report."""

from mlsd.evaluation.gates import GateResult, check_gates, failures, judge, oracle_gap
from mlsd.evaluation.metrics import (
    METRICS,
    Metric,
    binary_inputs,
    calibration_bins,
    check_metric_names,
    compute_metrics,
)
from mlsd.evaluation.multilabel import (
    check_multilabel_metrics,
    multilabel_metric,
    multilabel_report,
    per_label,
)
from mlsd.evaluation.report import evaluate, evaluation_report, plot_curves, render_markdown
from mlsd.evaluation.retrieval import (
    DECISION_METRICS,
    RETRIEVAL_METRICS,
    check_retrieval_metrics,
    metric_k,
    retrieval_report,
)
from mlsd.evaluation.uplift import (
    UPLIFT_METRICS,
    UpliftHoldout,
    allocate,
    check_uplift_metrics,
    uplift_report,
)

__all__ = [
    "DECISION_METRICS",
    "METRICS",
    "RETRIEVAL_METRICS",
    "UPLIFT_METRICS",
    "GateResult",
    "Metric",
    "UpliftHoldout",
    "allocate",
    "binary_inputs",
    "calibration_bins",
    "check_gates",
    "check_metric_names",
    "check_multilabel_metrics",
    "check_retrieval_metrics",
    "check_uplift_metrics",
    "compute_metrics",
    "evaluate",
    "evaluation_report",
    "failures",
    "judge",
    "metric_k",
    "multilabel_metric",
    "multilabel_report",
    "oracle_gap",
    "per_label",
    "plot_curves",
    "render_markdown",
    "retrieval_report",
    "uplift_report",
]
