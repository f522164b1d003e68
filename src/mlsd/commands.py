"""The ``mlsd`` command: look after the model registry of the project in the current directory.

    mlsd models list                # every version, newest last; * marks the stable one
    mlsd models stable              # the stable tag
    mlsd models promote TAG         # make TAG stable (it must be registered)
    mlsd rollout status             # what deployment/rollout.yaml serves
    mlsd rollout start --canary TAG --percent N
    mlsd rollout promote            # the canary becomes stable (registry pointer + file)
    mlsd rollout rollback           # drop the canary; everything goes to stable

The registry home and the problem name come from the project's Kedro config (``registry.home``
and ``problem.name``, env ``--env``), so the CLI and ``kedro run`` agree on where models are.
(Not ``mlsd/cli.py``: Kedro loads ``<package>.cli`` as a plugin of its own CLI.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlsd.errors import MlsdError

if TYPE_CHECKING:
    from mlsd.registry import ModelRegistry


def _registry(project: Path, env: str | None) -> ModelRegistry:
    from mlsd.project import load_parameters, project_path
    from mlsd.registry import ModelRegistry, RegistryParams

    params = load_parameters(project, env)
    registry = RegistryParams.model_validate(dict(params.get("registry") or {}))
    return ModelRegistry(project_path(project, registry.home), params["problem"]["name"])


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


def _rollout(args: argparse.Namespace, registry: ModelRegistry) -> int:
    from mlsd.serving import load_config
    from mlsd.serving.rollout import promote_canary, read_rollout, rollback_canary, start_canary

    config = load_config(args.project.resolve(), args.env)
    path = config.path(config.params.rollout_file)
    if args.cmd == "status":
        current = read_rollout(path)
    elif args.cmd == "start":
        inputs = config.spec.model_input_schema()
        current = start_canary(path, registry, inputs, args.canary, args.percent)
    elif args.cmd == "promote":
        current = promote_canary(path, registry, reason="canary promoted (mlsd rollout promote)")
    else:
        current = rollback_canary(path)
    shown = current.model_dump(mode="json")
    shown["stable"] = current.stable or f"{registry.stable()} (the registry's stable version)"
    print(json.dumps(shown, indent=2))
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
    args = parser.parse_args(argv)
    try:
        registry = _registry(args.project.resolve(), args.env)
        if args.group == "rollout":
            return _rollout(args, registry)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
