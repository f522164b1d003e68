"""The template: the root is its ad_click rendering, and every catalog problem renders a project
that installs offline and runs the whole loop.

A generated project is installed into its own venv: the pinned dependencies (this checkout's venv,
added as a site path), the local mlsd library and the project itself, editable, with no index and
no build isolation, so nothing is fetched. It then runs `kedro run` on small data, serves with
`bentoml serve`, answers a request, takes simulated traffic and runs its monitoring pipeline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mlsd.design import NOT_MEASURED
from mlsd.design.measured import RUN_NOT_MEASURED
from mlsd.design_doc import check_design
from mlsd.problems import load_problem
from mlsd.spec import ProblemSpec, load_spec
from mlsd.telemetry import TELEMETRY_OFF
from tests.conftest import PROBLEMS, ROOT, _write_small_data_gate, short_tmp_dir
from tests.server import post, serving

TEMPLATE = ROOT / "cookiecutter"
CONTEXT = json.loads((TEMPLATE / "cookiecutter.json").read_text())
CATALOG = CONTEXT["problem"]


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_root", TEMPLATE / "render_root.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_root = _renderer()


def test_the_root_is_the_template_rendered_for_ad_click(tmp_path: Path) -> None:
    project = render_root.render(tmp_path, render_root.ROOT_CONTEXT)
    rendered = render_root.rendered_files(project)
    assert Path("conf/base/problem.yml") in rendered
    assert Path("README.md") in rendered
    assert render_root.differences(project) == [], "edit cookiecutter/ and run `make template`"
    # The comparison is byte for byte: one changed line of a copy of the root is reported by name.
    copy = tmp_path / "root"
    for rel in rendered:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    spec_file = copy / "conf" / "base" / "problem.yml"
    spec_file.write_text(spec_file.read_text().replace("min_rows: 1000", "min_rows: 999", 1))
    changed = render_root.differences(project, copy)
    assert changed == ["conf/base/problem.yml: differs from the rendered template"]


@pytest.mark.parametrize("problem", CATALOG)
def test_every_catalog_problem_has_a_valid_spec_and_its_files(problem: str) -> None:
    folder = PROBLEMS / problem
    spec = load_spec(folder / "problem.yml")
    assert spec.name == problem
    assert spec.design is not None, "the design document needs the spec's design block"
    module = load_problem(spec)
    assert callable(getattr(module, "simulate", None)), f"{spec.problem_module} has no simulate()"
    parameters = yaml.safe_load((folder / "parameters_problem.yml").read_text())
    assert {"generator", "features"} <= set(parameters)
    smoke = yaml.safe_load((folder / "smoke.yml").read_text())
    assert set(smoke) == {"params", "gate"}
    assert f"`{problem}`" in (folder / "README.md").read_text()
    assert f"| `{problem}` |" in (TEMPLATE / "templates" / "problems" / "catalog.md").read_text()


@pytest.mark.parametrize("problem", CATALOG)
def test_every_rendered_design_document_is_what_its_spec_renders(problem: str, tmp_path: Path) -> None:
    project = render_root.render(tmp_path, {"problem": problem})
    text = (project / "docs" / "DESIGN.md").read_text()
    assert check_design(project) is None, "run `make template` to re-render the design documents"
    assert text.startswith(f"# Design: {problem}")
    assert RUN_NOT_MEASURED in text or NOT_MEASURED in text  # nothing measured in a new project


def archetype(spec: ProblemSpec) -> str:
    """The task archetype a generated README's wording follows, from the spec alone."""
    if spec.text_retrieval is not None:
        return "text_retrieval"
    if spec.retrieval is not None:
        return "two_stage_retrieval"
    return "binary" if spec.task == "binary_classification" else spec.task


@pytest.mark.parametrize("problem", CATALOG)
def test_the_readme_facts_of_each_problem_are_what_its_spec_says(problem: str) -> None:
    assert set(CONTEXT["_problems"]) == set(CATALOG)
    spec = load_spec(PROBLEMS / problem / "problem.yml")
    escalation = spec.text_retrieval is not None and spec.text_retrieval.escalation is not None
    expected = {"archetype": archetype(spec), "routing_key": spec.serving.routing_key}
    assert CONTEXT["_problems"][problem] == expected | ({"escalation": True} if escalation else {})


@pytest.mark.parametrize("problem", CATALOG)
def test_the_request_each_problems_readme_shows_is_one_its_api_accepts(problem: str) -> None:
    from mlsd.serving.schema import api_models

    spec = load_spec(PROBLEMS / problem / "problem.yml")
    bodies = re.findall(r"-d '(\{.*?\})'", (PROBLEMS / problem / "README.md").read_text(), re.DOTALL)
    assert bodies, f"{problem}'s README shows no request"
    for body in bodies:
        api_models(spec, max_batch=1).request.model_validate(json.loads(body))  # names a bad field


MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
TOP_DIRS = (
    r"src|tests|docs|\.ci|monitoring|conf|deployment|feature_repo|bench|cookiecutter|prometheus|grafana"
)
REPO_PATH = re.compile(rf"(?<![\w./$-])((?:{TOP_DIRS})/[\w./*{{}},<>-]*)")
"""A path in the prose, backticked or bare, under one of a project's folders (or, in
monitoring/README.md, of monitoring/): ``src/...``, ``tests/...``, ``prometheus/rules/x.yml``."""
FENCED = re.compile(r"^\s*```.*?^\s*```[^\n]*$", re.MULTILINE | re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page (lowercase, punctuation dropped, spaces to -)."""
    headings = re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _produced(project: Path) -> list[str]:
    """The folders and files a run writes (the project's .gitignore): not in a fresh project."""
    ignore = project / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    return [line.rstrip("/*") for line in lines if line.strip() and line[0] not in "#!*"]


def dead_references(project: Path, pages: list[Path]) -> list[str]:
    """Every relative link (and its #anchor) and every path under a project folder in the prose
    of ``pages`` that does not resolve inside ``project``: ``page: reference``. Code blocks are
    commands, not references; a path a run writes (.gitignore) is not expected to exist."""
    dead = []
    produced = _produced(project)
    for page in pages:
        prose = FENCED.sub("", page.read_text())
        for target in MD_LINK.findall(prose):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            inside = resolved.is_relative_to(project.resolve()) and resolved.exists()
            if not inside or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
                dead.append(f"{page.relative_to(project)}: {target}")
        for path in REPO_PATH.findall(MD_LINK.sub("", prose)):
            path = path.rstrip(".,")
            literal = re.split(r"[*{<]", path)[0]  # a glob or a placeholder: its folder
            if literal != path:
                literal = literal.rsplit("/", 1)[0]
            if any(literal == p or literal.startswith(p + "/") for p in produced):
                continue
            if not any((base / literal).exists() for base in (page.parent, project)):
                dead.append(f"{page.relative_to(project)}: {path}")
    return dead


def doc_pages(project: Path) -> list[Path]:
    """The pages a reader of ``project`` follows links in."""
    names = ["README.md", "monitoring/README.md", "cookiecutter/README.md"]
    return [project / n for n in names if (project / n).exists()] + sorted((project / "docs").glob("*.md"))


def test_every_link_and_path_in_the_repositorys_docs_exists() -> None:
    pages = doc_pages(ROOT)
    assert {ROOT / "README.md", ROOT / "docs" / "DESIGN.md", ROOT / "cookiecutter" / "README.md"} <= set(
        pages
    )
    assert dead_references(ROOT, pages) == []


@pytest.mark.parametrize(("problem", "online_store"), [(p, "sqlite") for p in CATALOG] + [("fraud", "redis")])
def test_every_link_and_path_in_a_generated_projects_docs_exists(
    problem: str, online_store: str, tmp_path: Path
) -> None:
    project = render_root.render(tmp_path, {"problem": problem, "online_store": online_store})
    pages = doc_pages(project)
    assert {
        project / "README.md",
        project / "monitoring" / "README.md",
        project / "docs" / "DESIGN.md",
    } <= set(pages)
    assert dead_references(project, pages) == []
    for page in pages:
        text = page.read_text()
        assert not re.search(r"\{\{|\{%", text), f"{page.name}: Jinja left over"


def test_a_planted_dead_link_or_path_is_reported_by_page(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "DESIGN.md").write_text("# Design\n\n## The model\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "README.md").write_text(
        "# P\n\n## The problem\n\n[design](docs/DESIGN.md), [model](docs/DESIGN.md#the-model), "
        "[up](#the-problem), [web](https://example.org/x.md), `src/` and `docs/*.md`.\n\n"
        "[gone](docs/monitoring.md), [bad anchor](docs/DESIGN.md#the-modle), [out](../x.md), "
        "`tests/test_prometheus.py`, see src/mlsd/monitoring/exporter.py.\n\n"
        "```\ncat docs/not_checked_in_code.md\n```\n"
    )
    assert dead_references(tmp_path, [tmp_path / "README.md"]) == [
        "README.md: docs/monitoring.md",
        "README.md: docs/DESIGN.md#the-modle",
        "README.md: ../x.md",
        "README.md: tests/test_prometheus.py",
        "README.md: src/mlsd/monitoring/exporter.py",
    ]


def test_cookiecutter_renders_the_repository_root_without_directory(tmp_path: Path) -> None:
    """`cookiecutter gh:org/mlsd-template` as the root README shows it: the repository's own
    cookiecutter.json (nested templates) points at cookiecutter/; run here on this checkout, offline,
    with a config that keeps cookiecutter's clone and replay folders in tmp."""
    config = tmp_path / "cookiecutter.yml"
    config.write_text(
        yaml.safe_dump({"cookiecutters_dir": str(tmp_path / "cc"), "replay_dir": str(tmp_path / "r")})
    )
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--config-file", str(config), "--output-dir", str(tmp_path),
         "--no-input", str(ROOT), "problem=fraud", "project_name=Card fraud"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **TELEMETRY_OFF},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    project = tmp_path / "card-fraud"
    assert "**Card fraud detection** (`fraud`)" in (project / "README.md").read_text()
    assert (project / "tests" / "test_monitoring.py").exists()
    assert 'project_name = "Card fraud"' in (project / "pyproject.toml").read_text()
    assert set(os.listdir(tmp_path)) == {"cookiecutter.yml", "card-fraud", "r"}  # nothing outside tmp


def test_the_cookiecutter_the_readme_installs_is_the_locked_one() -> None:
    locked = re.search(r"^cookiecutter==(\S+)$", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert locked is not None
    shown = set(re.findall(r"cookiecutter==([\w.]+)", (ROOT / "README.md").read_text()))
    assert shown == {locked.group(1)}


@pytest.fixture(scope="module")
def project_python() -> Iterator[Path]:
    """A fresh venv with the pinned dependencies (this venv's site-packages as a site path: pip and
    setuptools included, so installs need no index) and the local mlsd library installed editable;
    its python."""
    root = short_tmp_dir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "pinned_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip_install(python, ROOT)
    yield python
    shutil.rmtree(root, ignore_errors=True)


def pip_install(python: Path, path: Path) -> None:
    """``pip install --no-deps -e path`` without touching an index or building in isolation."""
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "-e", str(path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def run(python: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in ``project`` with telemetry off, output captured."""
    return subprocess.run(
        [str(python), "-m", *args],
        cwd=project,
        env={**os.environ, **TELEMETRY_OFF, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def overrides(params: str, block: str = "generator") -> dict[str, Any]:
    """The ``block.key=value`` items of a `kedro run --params` string, as ``{key: value}``."""
    items = (item.split("=", 1) for item in params.split(",") if item)
    prefix = f"{block}."
    return {key.removeprefix(prefix): yaml.safe_load(value) for key, value in items if key.startswith(prefix)}


def reports(project: Path, name: str) -> dict[str, Any]:
    return json.loads((project / "data" / "08_reporting" / name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("problem", CATALOG)
def test_a_generated_project_runs_the_whole_loop(problem: str, project_python: Path) -> None:
    root = short_tmp_dir()
    try:
        # One short name for every problem: Ray's unix sockets live under the project (107-byte limit).
        project = render_root.render(root, {"project_name": "Demo App", "problem": problem})
        assert project.name == "demo-app"
        assert not (project / "src" / "mlsd").exists()  # the machinery is a dependency, not a copy
        pip_install(project_python, project)

        smoke = yaml.safe_load((PROBLEMS / problem / "smoke.yml").read_text())
        _write_small_data_gate(project, smoke["gate"])
        result = run(project_python, project, "kedro", "run", "--params", smoke["params"])
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        evaluation = reports(project, "evaluation.json")
        assert evaluation["passed"] is True
        tag = reports(project, "registered_model.json")["tag"]
        assert tag.startswith(f"{problem}:")
        design = (project / "docs" / "DESIGN.md").read_text()  # rewritten with the run's numbers
        assert tag in design
        assert RUN_NOT_MEASURED not in design

        # What the project's `make test` runs: ruff, mypy and its own tests, the promtool checks of
        # its monitoring files included (they run wherever promtool is on the PATH, as here in CI).
        for check in (["ruff", "check"], ["ruff", "format", "--check"]):
            lint = run(project_python, project, *check, "src", "tests", "deployment")
            assert lint.returncode == 0, lint.stdout[-3000:]
        types = run(project_python, project, "mypy")
        assert types.returncode == 0, types.stdout[-3000:]
        tests = run(project_python, project, "pytest", "-q", "-ra", "-p", "no:cacheprovider", "tests")
        assert tests.returncode == 0, tests.stdout[-3000:]
        if shutil.which("promtool") is not None:  # -ra names a skipped promtool check: none here
            assert "SKIPPED" not in tests.stdout, tests.stdout

        spec = load_spec(project / "conf" / "base" / "problem.yml")
        generator = yaml.safe_load((project / "conf" / "base" / "parameters_problem.yml").read_text())
        world = {**generator["generator"], **overrides(smoke["params"])}
        (request,), _ = load_problem(spec).simulate(spec, world, 1, "none", 1)
        with serving(project, python=project_python) as server:
            status, body = post(f"{server.url}/predict", request)
            assert status == 200, body
            assert body["model_tag"] == tag
            assert ("score" in body) or ("items" in body), body
            traffic = run(
                project_python, project, "mlsd.commands", "simulate", "--url", server.url,
                "--count", "300", "--rate", "300", "--concurrency", "4",
                "--params", ",".join(f"generator.{k}={v}" for k, v in overrides(smoke["params"]).items()),
            )  # fmt: skip
            assert traffic.returncode == 0, (traffic.stdout + traffic.stderr)[-3000:]
        monitoring = run(project_python, project, "kedro", "run", "--pipelines", "monitoring")
        assert monitoring.returncode == 0, (monitoring.stdout + monitoring.stderr)[-4000:]
        drift = reports(project, "drift.json")
        assert drift["rows"]["current"] >= 300 - 1  # the simulated requests (plus the one above)
    finally:
        shutil.rmtree(root, ignore_errors=True)
