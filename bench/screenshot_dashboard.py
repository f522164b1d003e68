"""A screenshot of the problem's Evidently dashboard for the docs (docs/images/evidently_dashboard.png).

Serves a workspace with the real `evidently ui` on a free loopback port (telemetry off) and renders
the project's dashboard page with headless Chromium (Debian: `apt-get install chromium`). Every
request stays on 127.0.0.1: the UI's page and its assets come from the local server.

The workspace is either a project's own (``PROJECT_DIR/monitoring/workspace``, what
`kedro run --pipelines monitoring` fills; copied first, the original is never served) or, without
an argument, a synthetic week built with mlsd.monitoring as the pipeline does: the users' age
shifts from day 3 on, stable and canary serve 70/30 (tests/test_evidently_ui.py, same builder).

Run: .venv/bin/python bench/screenshot_dashboard.py [PROJECT_DIR] [--project NAME] [--out PNG]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_evidently_ui import EvidentlyUI, build_workspace

from mlsd.monitoring.drift import DriftParams

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "evidently_dashboard.png"
WEEK_AGE_SHIFTS = (0.0, 0.0, 1.0, 2.5, 4.0, 6.0, 9.0)  # years added to the users' age, day by day
WINDOW = "1600,3850"  # the whole dashboard (14 panels) at a laptop's width
# Virtual time for the page: its charts animate in; at 15 s (10 panels) and 60 s (14) some lines
# were still drawing.
VIRTUAL_TIME_MS = 120_000


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("no Chromium found: apt-get install -y --no-install-recommends chromium")


def workspace_copy(project_dir: Path | None, dest: Path) -> Path:
    """The workspace to serve, in ``dest``: the project's (a copy) or a synthetic week."""
    if project_dir is None:
        build_workspace(dest, WEEK_AGE_SHIFTS, rows=5000, reference_rows=20_000)
        return dest
    source = project_dir / DriftParams().workspace
    if not source.is_dir():
        sys.exit(f"{source} does not exist: run `kedro run --pipelines monitoring` in {project_dir} first")
    return Path(shutil.copytree(source, dest))


def screenshot(url: str, out: Path, scratch: Path) -> None:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={scratch / 'chromium'}", f"--window-size={WINDOW}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--screenshot={out}", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed ({done.returncode}):\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project_dir", nargs="?", type=Path, help="a project whose workspace to show")
    parser.add_argument("--project", help="the Evidently project (problem) name; default: the only one")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlsd-evidently-") as tmp:
        scratch = Path(tmp)
        workspace = workspace_copy(args.project_dir, scratch / "workspace")
        with EvidentlyUI(workspace, scratch / "ui.log") as ui:
            projects = {p["name"]: p["id"] for p in ui.get_json("/api/projects")}
            name = args.project or (next(iter(projects)) if len(projects) == 1 else None)
            if name not in projects:
                sys.exit(f"choose a project with --project: the workspace has {sorted(projects)}")
            dashboard = ui.get_json(f"/api/v2/dashboards/{projects[name]}")
            screenshot(f"{ui.url}/projects/{projects[name]}", args.out, scratch)
            log = ui.log()
        # The page asks the server for each chart's points: no request, no data on the picture.
        charts = sum(1 for p in dashboard["panels"] if p["values"])
        drawn = log.count('/data_series_batch HTTP/1.1" 201')
        if drawn < charts:
            sys.exit(f"the page loaded the data of {drawn} of {charts} panels: raise VIRTUAL_TIME_MS")
    size = args.out.stat().st_size
    print(f"{args.out}: {size / 1024:.0f} KiB, project {name!r}, {charts} panels with data")


if __name__ == "__main__":
    main()
