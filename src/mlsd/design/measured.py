"""The "Measured" section: numbers a run and the benchmarks wrote, never typed by hand.

:class:`Measured` holds the reports by their Kedro catalog names (the same names the pipeline
node takes as inputs); each is optional, and what is absent is said to be not measured yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlsd.design.markdown import code, metric, number, seconds, table
from mlsd.errors import ConfigError

BEGIN = "<!-- measured:begin -->"
END = "<!-- measured:end -->"
NOT_MEASURED = "Not measured yet: run `make run` (and `make bench`)."
RUN_NOT_MEASURED = "Model quality: not measured yet: run `make run`."
SCORERS = ("model", "baseline", "oracle")


Measured = Mapping[str, Mapping[str, Any]]
"""Reports by catalog name (keys of :data:`REPORTS`); any may be absent."""

REPORTS = {
    "evaluation": "model, baseline and oracle metrics on the holdout, and the gates",
    "split": "rows per span of the time split",
    "tuning": "Ray Tune trials and wall time",
    "training_report": "the model's Ray Train fit",
    "baseline_report": "the baseline's fit",
    "registered_model": "the tag registered and the stable one",
    "serving_bench": "serving latency from bench/results/serving.json (`make bench`)",
}
"""Every report the section reads, by catalog name, with what it contributes."""


def _holdout(holdout: Mapping[str, Any], split: Mapping[str, Any] | None) -> str:
    window = f"{holdout['start']} to {holdout['end']}; " if "start" in holdout and "end" in holdout else ""
    if "searches" in holdout:  # a text retrieval holdout: searches judged by the generator's truth
        line = (
            f"Holdout: {window}{holdout['searches']:,} searches with {holdout['relevant_items']:,} relevant "
            f"(search, item) pairs (true relevance >= {holdout['relevant_at']}, every item judged)."
        )
    elif "users" in holdout:  # a retrieval holdout: users and the items each engaged with
        line = (
            f"Holdout: {window}{holdout['users']:,} users with {holdout['relevant_items']:,} relevant "
            "(user, item) pairs."
        )
    elif "treated" in holdout:  # an uplift holdout: a randomized experiment with a budget
        line = (
            f"Holdout: {window}{holdout['rows']:,} rows, {holdout['treated']:,} treated; conversion "
            f"{holdout['conversion_treated']:.2%} treated vs {holdout['conversion_control']:.2%} control; "
            f"budget {holdout['budget']:,.0f}."
        )
    else:
        line = (
            f"Holdout: {window}{holdout['rows']:,} rows, {holdout['positives']:,} positives "
            f"(base rate {holdout['base_rate']:.2%})."
        )
    if split and "rows" in split:
        rows = split["rows"]
        line += f" Training rows {rows['train']:,}, validation rows {rows['valid']:,}."
    return line


def _gates_by_metric(gates: list[Mapping[str, Any]]) -> dict[str, str]:
    cells: dict[str, list[str]] = {}
    for g in gates:
        cells.setdefault(g["metric"], []).append(f"{'pass' if g['passed'] else 'FAIL'} {g['check']}")
    return {name: "; ".join(parts) for name, parts in cells.items()}


def _quality(evaluation: Mapping[str, Any], split: Mapping[str, Any] | None) -> list[str]:
    values, gaps = evaluation["metrics"], evaluation["oracle_gap"]["model"]
    gates = list(evaluation["gates"])
    by_metric = _gates_by_metric(gates)
    rows = [
        (
            code(name),
            *(metric(values[s].get(name)) for s in SCORERS),
            metric(gaps.get(name)),
            by_metric.get(name, ""),
        )
        for name in values["model"]
    ]
    failed = sum(not g["passed"] for g in gates)
    verdict = "every gate passed" if not failed else f"{failed} of {len(gates)} gate checks FAILED"
    lines = ["### Model quality (`evaluation`)", "", _holdout(evaluation["holdout"], split), ""]
    lines += table(["metric", "model", "baseline", "oracle", "model gap to oracle", "gates"], rows)
    lines += ["", f"Gates: {verdict}.", ""]
    lines += [
        f"- {'PASS' if g['passed'] else 'FAIL'} {g['metric']} {g['check']}: {g['detail']}" for g in gates
    ]
    return lines


def _training(measured: Measured) -> list[str]:
    rows = []
    tuning = measured.get("tuning")
    if tuning:
        trials = len(tuning.get("trials", []))
        detail = f"{trials} trial(s); best {tuning['metric']} {metric(tuning['best_score'])}"
        rows.append(("tune (Ray Tune)", seconds(tuning.get("wall_s")), detail))
    for name, step in (("training_report", "fit model (Ray Train)"), ("baseline_report", "fit baseline")):
        report = measured.get(name)
        if report:
            workers = len(report.get("workers", []))
            detail = f"{code(report['family'])} on {report['rows']:,} rows, {workers} worker(s)"
            rows.append((step, seconds(report.get("wall_s")), detail))
    if not rows:
        return []
    return ["### Training wall times", "", *table(["step", "wall time", "detail"], rows)]


def _registered(registered: Mapping[str, Any]) -> list[str]:
    stable = registered.get("stable")
    return [
        "### Registered model (`registered_model`)",
        "",
        f"Registered {code(registered['tag'])}; stable: {code(stable) if stable else 'none'}."
        if registered.get("registered", True)
        else f"The run trained {code(registered['tag'])} again (identical: not registered twice); "
        f"stable: {code(stable) if stable else 'none'}.",
    ]


def _serving(bench: Mapping[str, Any], budget_ms: float) -> list[str]:
    results, conditions = bench.get("results", {}), bench.get("conditions", {})
    machine = bench.get("machine", {})
    p50, p99 = results.get("ours_p50_ms"), results.get("ours_p99_ms")
    where = ", ".join(
        f"{k} {conditions[k]}" for k in ("requests", "concurrency", "workers") if k in conditions
    )
    lines = [
        "### Serving latency (`serving_bench`, from `make bench`)",
        "",
        f"p50 {number(p50)} ms, p99 {number(p99)} ms, {number(results.get('ours_rps'))} requests/s, "
        f"against the {number(budget_ms)} ms budget.",
    ]
    if where or machine:
        lines += [
            "",
            f"Conditions: {where}; machine {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
            f"measured {bench.get('measured_at', '?')} by {code(bench.get('command', 'make bench'))}.",
        ]
    return lines


def render_measured(measured: Measured | None, latency_budget_ms: float) -> list[str]:
    """The "Measured" section with its :data:`BEGIN` / :data:`END` markers, as Markdown lines.

    Raises:
        ConfigError: a report lacks a field the section shows (written by another mlsd version).
    """
    measured = measured or {}
    evaluation, registered = measured.get("evaluation"), measured.get("registered_model")
    bench = measured.get("serving_bench")
    try:
        parts = [
            _quality(evaluation, measured.get("split")) if evaluation else [],
            _training(measured),
            _registered(registered) if registered else [],
            _serving(bench, latency_budget_ms) if bench else [],
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"a measured report ({', '.join(sorted(measured))}) lacks a field or has a wrong one ({exc!r}); "
            "rerun `kedro run` (and `make bench`) to rewrite the reports"
        ) from exc
    parts = [part for part in parts if part]
    if not parts:
        body = [NOT_MEASURED]
    else:
        if not evaluation:
            parts.insert(0, [RUN_NOT_MEASURED])
        body = [line for part in parts for line in ["", *part]] + [""]
    return ["## Measured", "", BEGIN, *body, END]
