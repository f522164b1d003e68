"""The ``mlsd`` command: look after the model registry of the project in the current directory.

    mlsd models list                # every version, newest last; * marks the stable one
    mlsd models stable              # the stable tag
    mlsd models promote TAG         # make TAG stable (it must be registered)
    mlsd rollout status             # what deployment/rollout.yaml serves
    mlsd rollout start --canary TAG --percent N
    mlsd rollout promote            # the canary becomes stable (registry pointer + file)
    mlsd rollout rollback           # drop the canary; everything goes to stable
    mlsd rollout analyze [--feedback F|DIR] [--apply]   # canary vs stable: promote/rollback/keep collecting
    mlsd simulate --count N --rate R [--scenario S]   # traffic to a local service + feedback log
    mlsd monitor exporter [--report F] [--host H] [--port P]   # drift.json + canary verdict as metrics
    mlsd design [--check]           # write docs/DESIGN.md from the spec and reports; --check: is it fresh?

The registry home, the problem name and the serving paths come from the project's Kedro config
(``registry.home``, ``problem.name``, ``serving``; the catalog's ``drift_summary``; env ``--env``),
so the CLI, the server and ``kedro run`` agree on where models, logs and reports are.
(Not ``mlsd/cli.py``: Kedro loads ``<package>.cli`` as a plugin of its own CLI.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mlsd.errors import ConfigError, MlsdError, RolloutError

if TYPE_CHECKING:
    from mlsd.registry import ModelRegistry
    from mlsd.serving import ServiceConfig


def _list(registry: ModelRegistry, as_json: bool) -> None:
    versions = registry.versions()
    if as_json:
        rows = [{"tag": v.tag, "created": v.created, "stable": v.stable, **v.metadata} for v in versions]
        print(json.dumps(rows, indent=2, default=str))
        return
    if not versions:
        print("no models registered yet; `kedro run` trains and registers one")
    for v in versions:
        auc = v.metadata.get("metrics", {}).get("model", {})
        scores = " ".join(f"{k}={val:.4f}" for k, val in list(auc.items())[:2])
        print(f"{'*' if v.stable else ' '} {v.tag}  {v.created[:19]}  {scores}")


def _catalog_file(config: ServiceConfig, name: str, default: str) -> Path:
    """Where the project's catalog keeps the report ``name`` (as the monitoring pipeline writes it)."""
    from mlsd.project import load_config

    entry = load_config(config.project, "catalog", config.env).get(name) or {}
    return config.path(entry.get("filepath") or default)


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Replace a JSON report atomically (the exporter may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _analyze(args: argparse.Namespace, registry: ModelRegistry, config: ServiceConfig, path: Path) -> int:
    """Print the canary verdict as JSON and write it where the monitoring pipeline writes its own
    (the exporter's canary gauges, and so the alerts, follow it); with --apply, act on it."""
    from datetime import UTC, datetime

    from mlsd.monitoring import CanaryParams
    from mlsd.monitoring.canary import NO_AUTOMATIC_VERDICT
    from mlsd.monitoring.exporter import DEFAULT_CANARY_REPORT
    from mlsd.monitoring.logs import read_feedback, served_frame
    from mlsd.serving.canary_check import check_canary
    from mlsd.serving.prediction_log import read_log
    from mlsd.serving.rollout import read_rollout

    if config.spec.task in NO_AUTOMATIC_VERDICT:
        raise RolloutError(
            f"no automatic verdict for {NO_AUTOMATIC_VERDICT[config.spec.task]}; then run "
            "`mlsd rollout promote` or `mlsd rollout rollback`"
        )
    served = served_frame(read_log(config.path(config.params.prediction_log)))
    if served.empty:
        raise RolloutError(f"no served requests in {config.params.prediction_log} yet")
    # --feedback is a file or a directory, from the cwd; by default the simulator's directory.
    source = args.feedback.resolve() if args.feedback else config.path(config.params.feedback_log)
    feedback = read_feedback(source, missing_ok=args.feedback is None)
    params = CanaryParams.model_validate(dict(config.parameters.get("canary_analysis") or {}))
    canary = read_rollout(path).canary
    at = datetime.now(UTC).isoformat()
    budget = config.spec.serving.latency_budget_ms
    verdict = check_canary(
        path, registry, served, feedback, params, apply=args.apply, latency_budget_ms=budget
    )
    if verdict is None or canary is None:
        raise RolloutError(f"{path}: no canary to analyze")
    report = {"generated_at": at, "canary_started": canary.started, "feedback": str(source), **verdict}
    _write_report(_catalog_file(config, "canary_analysis", DEFAULT_CANARY_REPORT), report)
    print(json.dumps(report, indent=2, allow_nan=False))
    return 0


def _generator_params(parameters: dict[str, Any], overrides: str) -> dict[str, Any]:
    """conf's ``generator`` block with ``generator.KEY=VALUE,...`` overrides (kedro --params syntax)."""
    import yaml

    params = dict(parameters.get("generator") or {})
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("generator."):
            raise ConfigError(f"--params {item!r}: expected generator.KEY=VALUE")
        params[key.removeprefix("generator.")] = yaml.safe_load(value)
    return params


def _simulate(args: argparse.Namespace, config: ServiceConfig) -> int:
    """Send generated traffic to a running service (``--url``, default the project's own: conf
    ``serving.port`` on 127.0.0.1) and write the feedback it would get."""
    from datetime import UTC, datetime

    import numpy as np

    from mlsd.monitoring.traffic import feedback_records, loopback, send, write_feedback
    from mlsd.problems import load_problem

    url = args.url or config.url
    loopback(url)
    simulate = getattr(load_problem(config.spec), "simulate", None)
    if not callable(simulate):
        raise ConfigError(f"{config.spec.problem_module} has no simulate(); it cannot generate traffic")
    generator = _generator_params(config.parameters, args.params)
    requests, true_p = simulate(config.spec, generator, args.count, args.scenario, args.seed)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for i, request in enumerate(requests):
        request["request_id"] = f"sim-{stamp}-{args.seed}-{i}"
    sent = send(url, requests, args.rate, args.concurrency, token=config.auth_token())
    path = args.feedback or config.path(config.params.feedback_log) / f"feedback-{stamp}.jsonl"
    records = feedback_records(requests, true_p, sent.answered, args.seed, args.feedback_delay_s)
    write_feedback(path, records)
    summary = {
        "scenario": args.scenario,
        "sent": len(requests),
        "answered": len(sent.answered),
        "statuses": {str(k): v for k, v in sorted(sent.statuses.items())},
        "errors": sent.errors[:5],
        "wall_s": round(sent.wall_s, 2),
        "mean_true_p": round(float(np.mean(true_p)), 5),
        "feedback": str(path),
    }
    print(json.dumps(summary, indent=2))
    return 0 if len(sent.answered) == len(requests) else 1


def _rollout(args: argparse.Namespace, config: ServiceConfig) -> int:
    from mlsd.serving.rollout import (
        promote_canary,
        read_rollout,
        rollback_canary,
        served_outputs,
        start_canary,
    )

    registry = config.registry()
    path = config.path(config.params.rollout_file)
    if args.cmd == "analyze":
        return _analyze(args, registry, config, path)
    if args.cmd == "status":
        current = read_rollout(path)
    elif args.cmd == "start":
        inputs = config.spec.model_input_schema()
        outputs = served_outputs(config.spec)
        current = start_canary(path, registry, inputs, args.canary, args.percent, outputs)
    elif args.cmd == "promote":
        current = promote_canary(path, registry, reason="canary promoted (mlsd rollout promote)")
    else:
        current = rollback_canary(path)
    shown = current.model_dump(mode="json")
    shown["stable"] = current.stable or f"{registry.stable()} (the registry's stable version)"
    print(json.dumps(shown, indent=2))
    return 0


def _monitor(args: argparse.Namespace, config: ServiceConfig) -> int:
    """Serve the drift report (and the running canary's analysis) as Prometheus metrics until
    SIGINT / SIGTERM."""
    from mlsd.monitoring.exporter import DEFAULT_CANARY_REPORT, DEFAULT_REPORT, serve_drift_metrics
    from mlsd.serving.rollout import read_rollout

    # Where the monitoring pipeline writes them: the catalog's drift_summary and canary_analysis.
    configured = _catalog_file(config, "drift_summary", DEFAULT_REPORT)
    report = args.report.resolve() if args.report else configured  # --report: from the cwd
    canary_report = _catalog_file(config, "canary_analysis", DEFAULT_CANARY_REPORT)
    rollout_file = config.path(config.params.rollout_file)
    if not report.is_file():
        print(
            f"mlsd: {report} does not exist yet; mlsd_drift_report_up is 0 until "
            "`kedro run --pipelines monitoring` writes it",
            file=sys.stderr,
        )

    def canary_now() -> tuple[str, str | None] | None:
        if not rollout_file.exists():  # nothing deployed from here: no canary
            return None
        canary = read_rollout(rollout_file).canary
        return None if canary is None else (canary.tag, canary.started)

    def announce(url: str) -> None:
        print(f"serving {report} as Prometheus metrics on {url} (Ctrl-C stops)", flush=True)

    serve_drift_metrics(report, args.host, args.port, announce, canary_report, canary_now)
    return 0


def _design(args: argparse.Namespace) -> int:
    """Write the project's design document, or with --check exit 1 when it is stale."""
    from mlsd.design_doc import check_design, write_design

    project = args.project.resolve()
    if not args.check:
        print(f"wrote {write_design(project, args.env)}")
        return 0
    problem = check_design(project, args.env)
    if problem:
        print(f"mlsd: {problem}", file=sys.stderr)
        return 1
    print("the design document is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlsd", description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="project root (default: cwd)")
    parser.add_argument("--env", default=None, help="Kedro config env (default: local)")
    groups = parser.add_subparsers(dest="group", required=True)
    models = groups.add_parser("models", help="the model registry").add_subparsers(dest="cmd", required=True)
    listing = models.add_parser("list", help="every registered version; * marks the stable one")
    listing.add_argument("--json", action="store_true", help="print versions with their metadata as JSON")
    models.add_parser("stable", help="print the stable tag")
    promote = models.add_parser("promote", help="make a registered version the stable one")
    promote.add_argument("tag")
    promote.add_argument("--reason", default="promoted by hand (mlsd models promote)")
    rollout = groups.add_parser("rollout", help="which models serve (deployment/rollout.yaml)")
    steps = rollout.add_subparsers(dest="cmd", required=True)
    steps.add_parser("status", help="print the rollout the server reads")
    start = steps.add_parser("start", help="start a canary")
    start.add_argument("--canary", required=True, help="a registered tag")
    start.add_argument("--percent", type=float, required=True, help="share of routing keys, 0-100")
    steps.add_parser("promote", help="make the canary the stable model")
    steps.add_parser("rollback", help="stop the canary")
    analyze = steps.add_parser("analyze", help="compare the canary with stable from the logs")
    analyze.add_argument(
        "--feedback",
        type=Path,
        default=None,
        help="a feedback file (JSONL/CSV/parquet: request_id, label) or a directory of them "
        "(default: serving.feedback_log, where `mlsd simulate` writes)",
    )
    analyze.add_argument("--apply", action="store_true", help="promote or roll back as the verdict says")
    sim = groups.add_parser("simulate", help="send generated traffic to a local service; write feedback")
    sim.add_argument(
        "--url", default=None, help="the service, loopback only (default: 127.0.0.1, conf serving.port)"
    )
    sim.add_argument("--count", type=int, default=1000)
    sim.add_argument("--rate", type=float, default=100.0, help="requests per second")
    sim.add_argument("--concurrency", type=int, default=4)
    sim.add_argument(
        "--scenario", default="none", choices=["none", "covariate_shift", "concept_drift", "new_entities"]
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--feedback", type=Path, default=None, help="JSONL (default: a new file in serving.feedback_log)"
    )
    sim.add_argument("--feedback-delay-s", type=float, default=60.0, help="mean delay of an outcome")
    sim.add_argument(
        "--params", default="", help="generator overrides as for kedro run, e.g. generator.seed=3"
    )
    monitor = groups.add_parser("monitor", help="drift monitoring")
    monitoring = monitor.add_subparsers(dest="cmd", required=True)
    exporter = monitoring.add_parser("exporter", help="serve drift.json to Prometheus (blocks)")
    exporter.add_argument(
        "--report",
        type=Path,
        default=None,
        help="default: the catalog's drift_summary (data/08_reporting/drift.json), in the project",
    )
    exporter.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    exporter.add_argument("--port", type=int, default=9108, help="0 picks a free port")
    design = groups.add_parser("design", help="write docs/DESIGN.md from the spec, parameters and reports")
    design.add_argument(
        "--check", action="store_true", help="exit 1 if docs/DESIGN.md is stale; write nothing"
    )
    design.add_argument("--project", type=Path, default=argparse.SUPPRESS, help="project root (default: cwd)")
    args = parser.parse_args(argv)
    try:
        if args.group == "design":
            return _design(args)
        from mlsd.serving import load_config

        config = load_config(args.project.resolve(), args.env)
        if args.group == "simulate":
            return _simulate(args, config)
        if args.group == "rollout":
            return _rollout(args, config)
        if args.group == "monitor":
            return _monitor(args, config)
        registry = config.registry()
        if args.cmd == "list":
            _list(registry, args.json)
        elif args.cmd == "stable":
            stable = registry.stable()
            if stable is None:
                print("no stable model yet", file=sys.stderr)
                return 1
            print(stable)
        else:
            registry.promote(args.tag, reason=args.reason)
            print(f"stable: {args.tag}")
    except MlsdError as exc:
        print(f"mlsd: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a conf block that does not fit its settings model
        print(f"mlsd: invalid configuration in conf/: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
