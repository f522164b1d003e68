"""The evaluation report: metrics of model, baseline and oracle on one holdout, gates, and figures.

The report is a JSON-ready dict (what the pipeline stores and the registry keeps with a model);
:func:`render_markdown` and :func:`plot_curves` turn it and the scores into a page a person reads.
The oracle scores the holdout with the generator's true probabilities, so "gap to oracle" says how
much of the achievable quality the model leaves on the table.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlsd.errors import SpecError
from mlsd.evaluation.gates import judge
from mlsd.evaluation.metrics import binary_inputs, calibration_bins, compute_metrics
from mlsd.spec import MetricSpec

REQUIRED_SCORERS = ("model", "baseline", "oracle")

FIGURE_TITLES = {"roc": "ROC curve", "calibration": "Calibration curve"}


def evaluate(
    metrics: Sequence[MetricSpec],
    y_true: np.ndarray,
    scores: Mapping[str, np.ndarray],
    groups: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric for every scorer (e.g. ``"model"``, ``"baseline"``, ``"oracle"``) on the same labels
    (and the same ``groups``, for grouped metrics such as ``ndcg_at_k``).

    Raises:
        SpecError: a metric name is unknown.
        ValueError: a scorer's scores are unusable; the message names the scorer.
    """
    results = {}
    for name, score in scores.items():
        try:
            results[name] = compute_metrics(metrics, y_true, score, groups)
        except SpecError:
            raise  # a spec problem, the same for every scorer
        except ValueError as exc:
            raise ValueError(f"scores[{name!r}]: {exc}") from exc
    return results


def evaluation_report(
    metrics: Sequence[MetricSpec],
    y_true: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    holdout: Mapping[str, Any],
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics, gaps to the oracle and gate results for one holdout, as a JSON-ready dict.

    Args:
        metrics: the spec's metrics (names, direction, gates).
        y_true: the holdout's labels.
        scores: scores per scorer; must include ``"model"``, ``"baseline"`` and ``"oracle"``.
        holdout: what the holdout is (e.g. its time window), copied into the report.
        groups: the holdout's group per row (the spec's ``label.group``), for grouped metrics.

    Returns:
        ``{"holdout": {..., "rows", "positives", "base_rate"}, "metrics": {scorer: {metric: value}},
        "oracle_gap": {"model"|"baseline": {metric: gap}}, "gates": [GateResult as dict],
        "passed": bool}``; ``passed`` is True when every configured gate passed.
    """
    missing = [s for s in REQUIRED_SCORERS if s not in scores]
    if missing:
        raise ValueError(
            f"scores lacks {missing} (has {sorted(scores)}); the report compares the model with the "
            f"baseline and the oracle, so pass all of {list(REQUIRED_SCORERS)}"
        )
    labels, _ = binary_inputs(y_true, scores["model"])
    values = evaluate(metrics, labels, scores, groups)
    positives = int(labels.sum())
    return {
        "holdout": {
            **holdout,
            "rows": len(labels),
            "positives": positives,
            "base_rate": positives / len(labels),
        },
        **judge(metrics, values),
    }


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def _holdout_line(holdout: Mapping[str, Any]) -> str:
    extra = [
        f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
        for k, v in holdout.items()
        if k not in ("rows", "positives", "base_rate")
    ]
    if "base_rate" not in holdout:  # a retrieval holdout counts users and relevant items instead
        return "Holdout: " + "; ".join(extra) + "."
    counts = (
        f"{holdout['rows']:,} rows, {holdout['positives']:,} positives (base rate {holdout['base_rate']:.2%})"
    )
    return "Holdout: " + "; ".join([*extra, counts]) + "."


def render_markdown(report: Mapping[str, Any], *, figures: Mapping[str, str]) -> str:
    """A Markdown page for a report from :func:`evaluation_report`.

    Args:
        report: the evaluation report.
        figures: figure name (``"roc"``, ``"calibration"``, ...) -> png file name relative to the page.
    """
    gates = report["gates"]
    failed = sum(not g["passed"] for g in gates)
    verdict = "PASSED" if report["passed"] else f"FAILED ({failed} of {len(gates)} gates failed)"
    values = report["metrics"]
    lines = [
        "# Evaluation report",
        "",
        _holdout_line(report["holdout"]),
        "",
        f"Gates: **{verdict}**",
        "",
        "## Metrics",
        "",
        "| metric | model | baseline | oracle | model gap to oracle |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in values["model"]:
        cells = [_number(values.get(s, {}).get(name)) for s in REQUIRED_SCORERS]
        gap = _number(report["oracle_gap"]["model"].get(name))
        lines.append(f"| {name} | {' | '.join(cells)} | {gap} |")
    lines += ["", "## Gates", ""]
    if not gates:
        lines.append("No gates configured.")
    for g in gates:
        lines.append(f"- **{'PASS' if g['passed'] else 'FAIL'}** {g['metric']} {g['check']}: {g['detail']}")
    if figures:
        lines += ["", "## Figures"]
        for name, path in figures.items():
            lines += ["", f"![{FIGURE_TITLES.get(name, name.replace('_', ' '))}]({path})"]
    return "\n".join(lines) + "\n"


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _roc_png(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> bytes:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = Figure(figsize=(5.5, 5))
    ax = figure.add_subplot()
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(labels, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, score):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="lower right")
    return _png(figure)


def _calibration_png(labels: np.ndarray, scores: Mapping[str, np.ndarray], bins: int) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5))
    ax = figure.add_subplot()
    top = 0.0
    for name, score in scores.items():
        mean_score, observed, _ = calibration_bins(labels, score, bins)
        ax.plot(mean_score, observed, marker="o", markersize=3, label=name)
        top = max(top, float(mean_score.max()), float(observed.max()))
    top = top * 1.05 or 1.0  # zoomed to the data: CTRs are ~2%, a [0, 1] square would hide them
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed click rate",
        title=f"Calibration ({bins} equal-frequency bins)",
        xlim=(0, top),
        ylim=(0, top),
    )
    ax.legend(loc="upper left")
    return _png(figure)


def plot_curves(y_true: np.ndarray, scores: Mapping[str, np.ndarray], *, bins: int = 20) -> dict[str, bytes]:
    """ROC and calibration curves of every scorer, as PNG bytes.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend or figure
    state), so it is safe in worker processes and needs no display.

    Returns:
        ``{"roc": png, "calibration": png}``.
    """
    checked = {name: binary_inputs(y_true, score) for name, score in scores.items()}
    if not checked:
        raise ValueError("scores is empty; pass at least one scorer's scores to plot")
    labels = next(iter(checked.values()))[0]
    plain = {name: score for name, (_, score) in checked.items()}
    return {"roc": _roc_png(labels, plain), "calibration": _calibration_png(labels, plain, bins)}
