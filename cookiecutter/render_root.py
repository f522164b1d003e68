"""Render the template for the repository root (the ad_click instance) and compare or write it.

The repository root is what ``cookiecutter/`` renders with :data:`ROOT_CONTEXT`; nothing there
is a hand-kept copy. ``python cookiecutter/render_root.py --check`` lists every rendered file
that differs from the root (exit 1); ``--write`` copies the rendering over the root;
``--designs`` first re-renders each problem's design document from its spec (``make template``
does both). The test suite runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent
ROOT = TEMPLATE.parent
ROOT_CONTEXT: dict[str, Any] = {
    "project_name": "mlsd-template",
    "problem": "ad_click",
    "online_store": "sqlite",
    "_library": True,
}
"""The answers that make the root: the library's own repository, for the default problem."""


def render(output_dir: Path, context: dict[str, Any]) -> Path:
    """Render the template with ``context`` (no prompts) into ``output_dir``; the project folder.

    Cookiecutter's clone and replay folders (by default ~/.cookiecutters and ~/.cookiecutter_replay)
    are those of a config file in a temporary folder, removed afterwards: nothing is written outside
    ``output_dir``."""
    from cookiecutter.main import cookiecutter

    with tempfile.TemporaryDirectory(prefix="mlsd-cookiecutter-") as tmp:
        config = Path(tmp) / "config.yml"
        dirs = {"cookiecutters_dir": f"{tmp}/cookiecutters", "replay_dir": f"{tmp}/replay"}
        config.write_text(json.dumps(dirs))  # JSON is YAML
        made = cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context=context,
            output_dir=str(output_dir),
            config_file=str(config),
        )
    return Path(made)


PROBLEMS = TEMPLATE / "templates" / "problems"
MEASURED = re.compile(r"<!-- measured:begin -->.*?<!-- measured:end -->", re.DOTALL)
"""The design document's measured section: `kedro run` and `make bench` fill it in place, so the
root's may hold numbers the template's does not; everything outside it must match."""


def _comparable(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name == "DESIGN.md":
        data = MEASURED.sub("<!-- measured -->", data.decode()).encode()
    return data


def render_designs(problems: list[str]) -> list[Path]:
    """Render each problem's docs/DESIGN.md (spec, parameters, nothing measured) into its folder
    of templates/problems, where the template includes it from."""
    from mlsd.design_doc import render_project

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for problem in problems:
            target = PROBLEMS / problem / "DESIGN.md"
            if not target.exists():
                target.write_text("")  # the template includes it; the real text is rendered next
            project = render(Path(tmp) / problem, {"problem": problem})
            _, text = render_project(project)
            target.write_text(text)
            written.append(target)
    return written


def _write(source: Path, target: Path) -> None:
    """Copy a rendered file over the root's; a design document keeps the root's measured numbers."""
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = MEASURED.search(target.read_text()) if target.name == "DESIGN.md" and target.exists() else None
    if kept is None:
        shutil.copy2(source, target)
    else:
        target.write_text(MEASURED.sub(lambda _: kept.group(0), source.read_text()))


def rendered_files(project: Path) -> list[Path]:
    """Every file of a rendered project, relative to it, sorted."""
    return sorted(p.relative_to(project) for p in project.rglob("*") if p.is_file())


def differences(project: Path, root: Path = ROOT) -> list[str]:
    """Rendered files that are missing from ``root`` or differ from it (byte for byte)."""
    out = []
    for rel in rendered_files(project):
        target = root / rel
        if not target.is_file():
            out.append(f"{rel}: rendered but missing from the root")
        elif _comparable(project / rel) != _comparable(target):
            out.append(f"{rel}: differs from the rendered template")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if the root differs from the template")
    mode.add_argument("--write", action="store_true", help="copy the rendered files over the root")
    mode.add_argument(
        "--designs",
        action="store_true",
        help="re-render each problem's DESIGN.md from its spec, then --write",
    )
    args = parser.parse_args(argv)
    if args.designs:
        catalog = json.loads((TEMPLATE / "cookiecutter.json").read_text())["problem"]
        for path in render_designs(catalog):
            print(f"wrote {path.relative_to(ROOT)}")
        args.write = True
    with tempfile.TemporaryDirectory() as tmp:
        project = render(Path(tmp), ROOT_CONTEXT)
        if args.write:
            for rel in rendered_files(project):
                _write(project / rel, ROOT / rel)
            print(f"wrote {len(rendered_files(project))} files from the template into {ROOT}")
            return 0
        diff = differences(project)
    for line in diff:
        print(line)
    if diff:
        print(f"{len(diff)} files differ: edit cookiecutter/ and run `make template`", file=sys.stderr)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
