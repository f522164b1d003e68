"""The ``mlsd`` command: look after the model registry of the project in the current directory.

    mlsd models list                # every version, newest last; * marks the stable one
    mlsd models stable              # the stable tag
    mlsd models promote TAG         # make TAG stable (it must be registered)

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
    args = parser.parse_args(argv)
    try:
        registry = _registry(args.project.resolve(), args.env)
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
