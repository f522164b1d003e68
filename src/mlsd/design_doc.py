"""A project's design document: render docs/DESIGN.md from the project's conf and reports,
write it, or check that it is up to date (``mlsd design [--check]``).

Where the document and the reports live comes from the project's Kedro catalog (``design_doc``
and the report entries of :data:`mlsd.design.REPORTS`), so ``mlsd design`` and the ``kedro run``
node read and write the same files and render the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlsd.design import REPORTS, render_design
from mlsd.errors import ConfigError, SpecError
from mlsd.project import load_config, load_parameters, project_path
from mlsd.spec import spec_from_mapping
from mlsd.spec.loader import SPEC_KEY

DESIGN_DOC = "design_doc"
"""The catalog entry of the document (a text dataset, docs/DESIGN.md)."""


def _filepath(project: Path, catalog: Mapping[str, Any], name: str) -> Path:
    entry = catalog.get(name)
    if not isinstance(entry, Mapping) or "filepath" not in entry:
        raise ConfigError(
            f"the catalog of {project} has no {name!r} entry with a filepath; the design document "
            f"needs it (copy the entry from mlsd-template's conf/base/catalog.yml)"
        )
    return project_path(project, entry["filepath"])


def read_reports(paths: Mapping[str, Path]) -> dict[str, Any]:
    """The reports that exist, by name; a missing file is simply not measured yet.

    Raises:
        ConfigError: a report exists but is not a JSON object (names the file).
    """
    reports = {}
    for name, path in paths.items():
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path} is not readable JSON ({exc}); rerun what writes it or delete it"
            ) from exc
        if not isinstance(report, dict):
            raise ConfigError(
                f"{path} holds a {type(report).__name__}, not a JSON object; rerun what writes it"
            )
        reports[name] = report
    return reports


def render_project(project: Path, env: str | None = None) -> tuple[Path, str]:
    """Where the project's design document goes, and what it should say now.

    Raises:
        ConfigError: the project's conf or a report cannot be read, or the catalog lacks an entry.
        SpecError: the spec is missing or invalid.
    """
    parameters = load_parameters(project, env)
    if SPEC_KEY not in parameters:
        raise SpecError(
            f"{project / 'conf'} has no '{SPEC_KEY}:' parameters; conf/base/problem.yml must define it"
        )
    spec = spec_from_mapping(parameters[SPEC_KEY], source=f"{project / 'conf'} problem.yml")
    catalog = load_config(project, "catalog", env)
    reports = read_reports({name: _filepath(project, catalog, name) for name in REPORTS})
    return _filepath(project, catalog, DESIGN_DOC), render_design(spec, parameters, reports)


def write_design(project: Path, env: str | None = None) -> Path:
    """Render and write the project's design document; returns its path."""
    path, text = render_project(project, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check_design(project: Path, env: str | None = None) -> str | None:
    """Why the project's design document is stale (missing, or not what renders now); None if fresh."""
    path, text = render_project(project, env)
    if not path.is_file():
        return f"{path} does not exist; run `mlsd design` to write it"
    if path.read_text() != text:
        return (
            f"{path} is stale: the spec, parameters or reports changed since; run `mlsd design` "
            "(`kedro run` and `kedro run --pipelines train` rewrite it; other pipelines do not)"
        )
    return None
