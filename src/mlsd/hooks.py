"""Kedro hooks: fail fast on an invalid spec, and record how long each node took."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from mlsd.errors import SpecError
from mlsd.spec import spec_from_mapping
from mlsd.spec.loader import SPEC_KEY


class SpecCheckHook:
    """Validate ``params:problem`` before any node runs, so a bad spec stops the run by name."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        params = context.params
        if SPEC_KEY not in params:
            raise SpecError(
                f"No '{SPEC_KEY}:' in the parameters of env {context.env!r}; "
                "conf/base/problem.yml must define the problem spec."
            )
        spec_from_mapping(params[SPEC_KEY], source=f"conf ({context.env or 'local'} env) problem.yml")


class RunTimingsHook:
    """Write node wall times of a successful run to data/08_reporting/run_timings.json."""

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._seconds: dict[str, float] = {}
        self._root = Path.cwd()

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._root = Path(context.project_path)

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        self._start[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        self._seconds[node.name] = round(time.perf_counter() - self._start.pop(node.name), 3)

    @hook_impl
    def after_pipeline_run(self) -> None:
        out = self._root / "data" / "08_reporting" / "run_timings.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"node_seconds": self._seconds}, indent=2))
