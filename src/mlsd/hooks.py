"""Kedro hooks: fail fast on an invalid spec, record how long each node took, and keep known
third-party deprecation noise out of the run's output."""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from mlsd.errors import SpecError
from mlsd.spec import spec_from_mapping
from mlsd.spec.loader import SPEC_KEY

Filter = tuple[type[Warning], str, str]
"""(category, message regex, regex of the module the warning is attributed to)."""

THIRD_PARTY_WARNINGS: tuple[Filter, ...] = (
    # kedro 1.7's config loader calls omegaconf's renamed resolver API on every load
    (UserWarning, r"register_new_resolver\(\) is deprecated", r"kedro\.config\.omegaconf_config"),
    # ray 2.60 warns about its own DataContext fields while Ray Data starts (Ray Train imports it)
    (DeprecationWarning, r"`use_push_based_shuffle` is deprecated", r"ray\.data\.context"),
    (DeprecationWarning, r"`use_polars` is deprecated", r"ray\.data\.context"),
    (DeprecationWarning, r"`use_arrow_tensor_v2` is deprecated", r"ray\.data\.context"),
    # bentoml 1.4 builds its ignore-file matcher with pathspec's renamed pattern class
    (DeprecationWarning, r"GitWildMatchPattern \('gitwildmatch'\) is deprecated", r"pathspec\."),
    # feast 0.67 truncates event timestamps to microseconds when it materializes (always has)
    (UserWarning, r"Discarding nonzero nanoseconds in conversion", r"feast\.utils"),
)
"""Warnings that third-party code raises about itself on every run and a project cannot act on:
(category, message regex, regex of the module the warning is attributed to). Only these are
silenced, by message and module, so warnings from mlsd, a project's own code or a new one from a
dependency still show. Checked by tests/test_pipeline.py (each is matched by its real text)."""


def quiet_third_party_warnings(entries: Sequence[Filter] = THIRD_PARTY_WARNINGS) -> None:
    """Ignore exactly the known third-party warnings (:data:`THIRD_PARTY_WARNINGS`) in this process.

    Called from the project's settings module, which Kedro imports before it builds the config
    loader (the first of them is raised there, before any hook could run).
    """
    for category, message, module in entries:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


class QuietWarningsHook:
    """Keep :data:`THIRD_PARTY_WARNINGS` silenced for the whole run.

    Importing feast (inside a node: it is imported lazily) installs a catch-all
    ``warnings.simplefilter("once", DeprecationWarning)`` in front of every filter, which would let
    the known ones through again; adding ours again before each node puts them back in front
    (``warnings.filterwarnings`` moves an existing filter rather than duplicating it).
    """

    @hook_impl
    def before_node_run(self) -> None:
        quiet_third_party_warnings()


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


def timings_file(root: Path, pipeline_names: Sequence[str] | None) -> Path:
    """Where a run's node timings go: ``run_timings.json`` for the default pipeline,
    ``run_timings_<name>.json`` for ``--pipelines <name>`` (names joined by ``+``), so one
    pipeline's run never overwrites another's timings."""
    names = [n for n in (pipeline_names or []) if n != "__default__"]
    suffix = "_" + "+".join(re.sub(r"[^A-Za-z0-9_.-]", "_", n) for n in sorted(names)) if names else ""
    return root / "data" / "08_reporting" / f"run_timings{suffix}.json"


class RunTimingsHook:
    """Write node wall times of a successful run to data/08_reporting/run_timings*.json (one file
    per pipeline selection; see :func:`timings_file`)."""

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
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        names = run_params.get("pipeline_names") or ["__default__"]
        out = timings_file(self._root, names)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "pipelines": list(names),
            "run_id": run_params.get("run_id"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "node_seconds": self._seconds,
        }
        out.write_text(json.dumps(report, indent=2))
