"""The template: the root is its ad_click rendering, and every catalog problem renders a project
that installs offline and runs the whole loop.

A generated project is installed into its own venv: the pinned dependencies (this checkout's venv,
added as a site path), the local mlsd library and the project itself, editable, with no index and
no build isolation, so nothing is fetched. It then runs its README's smaller-data `kedro run`,
serves with `bentoml serve`, answers its README's requests, takes simulated traffic and runs its
monitoring pipeline.

Every command a generated project's pages show is run by a test: the ones it shares with the root
by tests/test_docs.py, the problem's own by the whole-loop test here (see
:func:`test_every_command_of_a_generated_projects_pages_is_run_by_a_test`).
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

import pandas as pd
import pytest
import yaml

from mlsd.design import NOT_MEASURED
from mlsd.design.measured import RUN_NOT_MEASURED
from mlsd.design_doc import check_design
from mlsd.problems import load_problem
from mlsd.spec import ProblemSpec, load_spec
from mlsd.telemetry import TELEMETRY_OFF
from tests.conftest import PROBLEMS, ROOT, short_tmp_dir
from tests.doc_commands import DocCommand, doc_commands, reader_venv
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


def test_rendering_writes_nothing_outside_its_output_dir(tmp_path: Path) -> None:
    """`render_root.render` (the tests' renderer and `make template`'s) keeps cookiecutter's replay
    and clone folders, by default in the home directory, in a temporary folder it removes."""
    home, tmp, out = tmp_path / "home", tmp_path / "tmp", tmp_path / "out"
    home.mkdir()
    tmp.mkdir()
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import render_root; "
        "print(render_root.render(Path(sys.argv[2]), {'problem': 'fraud'}).name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(TEMPLATE), str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, **TELEMETRY_OFF, "HOME": str(home), "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(out) == [result.stdout.strip()]
    assert os.listdir(home) == []
    assert os.listdir(tmp) == []


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


PAGES = ("README.md", "monitoring/README.md")
"""The pages of a generated project that hold commands; the root's are tests/test_docs.py's."""
OWN_KINDS = {
    "smaller data": re.compile(r'\.venv/bin/kedro run --params "(?P<params>[^"\s]+)"'),
    "batch scoring": re.compile(r"\.venv/bin/kedro run --pipelines batch_scoring"),
    "request": re.compile(
        r"curl -s -X POST 127\.0\.0\.1:3000/predict -H 'Content-Type: application/json' -d '\{.*\}'"
    ),
}
"""The kinds of command of a problem's own that the whole-loop test runs as written."""


def root_commands() -> set[str]:
    """The commands of the root's pages: tests/test_docs.py runs each (or names the test that does)."""
    return {command.text for page in PAGES for command in doc_commands(ROOT / page, ROOT)}


def own_commands(project: Path, problem: str, root: set[str]) -> list[DocCommand]:
    """The problem's own commands of ``project``'s pages: those of its README part (even where the
    root shows them too, as ad_click's does) and those that are not one of ``root`` once the
    problem's name (a whole word: `fraud:<version>`, not `feedback`) reads `ad_click`."""
    part = {c.text for c in doc_commands(PROBLEMS / problem / "README.md", PROBLEMS)}
    name = re.compile(rf"\b{re.escape(problem)}\b")
    commands = [c for page in PAGES for c in doc_commands(project / page, project)]
    return [c for c in commands if c.text in part or name.sub("ad_click", c.text) not in root]


def own_kind(command: DocCommand) -> str | None:
    """Which of :data:`OWN_KINDS` ``command`` is, or None: no test runs it."""
    return next((kind for kind, pattern in OWN_KINDS.items() if pattern.fullmatch(command.text)), None)


def smaller_params(command: DocCommand) -> str:
    """The `--params` of a smaller-data command."""
    match = OWN_KINDS["smaller data"].fullmatch(command.text)
    assert match is not None, command
    return match["params"]


def unrun_commands(project: Path, problem: str, root: set[str]) -> list[str]:
    """``page:line: `command``` for each command of ``project``'s pages that no test runs, with
    the line of the problem's README part it comes from."""
    part = {c.text: c.where for c in doc_commands(PROBLEMS / problem / "README.md", ROOT)}
    return [
        f"{c.where}: `{c.text}`" + (f" (from {part[c.text]})" if c.text in part else "")
        for c in own_commands(project, problem, root)
        if own_kind(c) is None
    ]


def promised_fields(readme: str) -> set[str]:
    """The response fields a README's Serving section promises: the backticked names of its
    sentence "the response carries ... `missing_features`.", outside parentheses (what those say
    of a field is not a field)."""
    (sentence,) = re.findall(r"the response carries(.*?`missing_features`)\.", readme, re.DOTALL)
    removed = 1
    while removed:  # innermost parentheses first: "(tau = P(outcome | treated) - ...)"
        sentence, removed = re.subn(r"\([^()]*\)", "", sentence)
    return set(re.findall(r"`(\w+)`", sentence))


@pytest.mark.parametrize("problem", CATALOG)
def test_every_command_of_a_generated_projects_pages_is_run_by_a_test(problem: str, tmp_path: Path) -> None:
    """The rule, for each command of a generated project's README.md and monitoring/README.md:
    a command of the problem's README part (cookiecutter/templates/problems/NAME/README.md) is the
    problem's own; any other must, with the problem's name (a whole word) read as `ad_click`, be a
    command of the root's same pages, which tests/test_docs.py runs (or names the test that does),
    else it is the problem's own too (wording that differs per archetype). The problem's own must
    be of a kind the whole-loop test below runs as written in the project: the smaller-data
    `.venv/bin/kedro run --params "..."` (exactly one), `.venv/bin/kedro run --pipelines
    batch_scoring` or a `curl` request to /predict. Any other command fails here, named by page
    and line.

    The smaller-data run is the loop's training run, so CI runs it at the size it shows:
    tests/test_pipeline.py keeps it the problem's smoke.yml run (the size, and the gate that
    smoke.yml's comment says was measured to pass there). Here its `generator.*` keys must be keys
    of the problem's generator block (an unknown one would be ignored, and the run would train on
    the default size), and the response fields the README promises must be those of the problem's
    API."""
    from mlsd.serving.schema import api_models

    project = render_root.render(tmp_path, {"problem": problem})
    root = root_commands()
    assert len(root) > 30, "the extraction found too few commands in the root's pages"
    unrun = unrun_commands(project, problem, root)
    assert not unrun, f"{problem}: no test runs these commands:\n" + "\n".join(unrun)
    own = own_commands(project, problem, root)
    kinds = [own_kind(c) for c in own]
    assert kinds.count("smaller data") == 1, f"{problem}: one smaller-data run, not {own}"
    assert "request" in kinds, f"{problem}: the README shows no request"
    (smaller,) = [c for c in own if own_kind(c) == "smaller data"]
    parameters = yaml.safe_load((project / "conf" / "base" / "parameters_problem.yml").read_text())
    unknown = set(overrides(smaller_params(smaller))) - set(parameters["generator"])
    assert not unknown, f"{smaller.where}: no such generator parameter {sorted(unknown)}"
    spec = load_spec(project / "conf" / "base" / "problem.yml")
    response = set(api_models(spec, max_batch=1).prediction.model_fields)
    assert promised_fields((project / "README.md").read_text()) == response


def test_a_planted_unrun_command_is_named_by_page_and_line(tmp_path: Path) -> None:
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "README.md").write_text("# Monitoring\n\n```\nmake monitor\n```\n")
    (tmp_path / "README.md").write_text(
        "# P\n\n```\nmake run\n.venv/bin/mlsd models promote fraud:<version>\n"
        ".venv/bin/mlsd models promote fraudster:<version>\n.venv/bin/mlsd modles list\n```\n\n"
        'Small: `.venv/bin/kedro run --params "generator.n_transactions=60000"`.\n\n'
        "```\ncurl -s -X POST 127.0.0.1:3000/predict -H 'Content-Type: application/json' "
        "-d '{\"card_id\": 1}'\n```\n"
    )
    assert unrun_commands(tmp_path, "fraud", root_commands()) == [
        "README.md:6: `.venv/bin/mlsd models promote fraudster:<version>`",
        "README.md:7: `.venv/bin/mlsd modles list`",
    ]
    kinds = [own_kind(c) for c in own_commands(tmp_path, "fraud", root_commands())]
    assert kinds == [None, None, "smaller data", "request"]


def test_the_promised_response_fields_are_read_from_the_serving_sentence() -> None:
    text = (
        "request); the response carries\n`score` (the effect, tau = P(outcome | treated) - P(outcome |\n"
        "not treated): not a `label`),\n`model_tag`, `variant`, `request_id` and `missing_features`.\n"
        "`/predict_batch` takes `requests`."
    )
    assert promised_fields(text) == {"score", "model_tag", "variant", "request_id", "missing_features"}


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


def reader_run(project: Path, text: str) -> subprocess.CompletedProcess[str]:
    """A README command as a reader runs it: bash in ``project``, with `.venv` (this venv, see
    :func:`tests.doc_commands.reader_venv`) and the project's own package on the path."""
    return subprocess.run(
        ["bash", "-c", text],
        cwd=project,
        env={**os.environ, **TELEMETRY_OFF, "COLUMNS": "250", "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def request_as_written(project: Path, command: DocCommand, port: int) -> tuple[int, Any]:
    """A README's `curl` request sent to the server on ``port`` (the only change to the command;
    a write-out of the HTTP status is appended to read it): the status and the JSON answer."""
    text = command.text.replace("127.0.0.1:3000/", f"127.0.0.1:{port}/") + " -w '\\n%{http_code}'"
    result = reader_run(project, text)
    assert result.returncode == 0, f"{command.where}: `{text}` exited {result.returncode}: {result.stderr}"
    answer, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(answer)


@pytest.mark.slow
@pytest.mark.parametrize("problem", CATALOG)
def test_a_generated_project_runs_the_whole_loop(problem: str, project_python: Path) -> None:
    """The loop, with the problem's own README commands run as written (see
    :func:`test_every_command_of_a_generated_projects_pages_is_run_by_a_test`): the smaller-data
    `kedro run` is the training run; a batch scoring run it shows scores the training set with
    the registered model; each `curl` request, sent to the test's server, answers 200 with exactly
    the response fields the README's Serving section promises."""
    root = short_tmp_dir()
    try:
        # One short name for every problem: Ray's unix sockets live under the project (107-byte limit).
        project = render_root.render(root, {"project_name": "Demo App", "problem": problem})
        assert project.name == "demo-app"
        assert not (project / "src" / "mlsd").exists()  # the machinery is a dependency, not a copy
        pip_install(project_python, project)
        own = own_commands(project, problem, root_commands())
        (smaller,) = [c for c in own if own_kind(c) == "smaller data"]
        requests = [c for c in own if own_kind(c) == "request"]
        assert requests, f"{problem}: the README shows no request"

        reader_venv(project)
        result = reader_run(project, smaller.text)
        assert result.returncode == 0, f"{smaller.where}: {(result.stdout + result.stderr)[-4000:]}"
        evaluation = reports(project, "evaluation.json")
        assert evaluation["passed"] is True
        tag = reports(project, "registered_model.json")["tag"]
        assert tag.startswith(f"{problem}:")
        design = (project / "docs" / "DESIGN.md").read_text()  # rewritten with the run's numbers
        assert tag in design
        assert RUN_NOT_MEASURED not in design
        for command in (c for c in own if own_kind(c) == "batch scoring"):
            result = reader_run(project, command.text)
            assert result.returncode == 0, f"{command.where}: {(result.stdout + result.stderr)[-4000:]}"
            scored = reports(project, "batch_scoring.json")
            assert scored["tag"] == tag, scored
            assert scored["rows"] == len(
                pd.read_parquet(project / "data" / "07_model_output" / "batch_scores.parquet")
            )
            assert scored["rows"] == len(
                pd.read_parquet(project / "data" / "05_model_input" / "training_set.parquet")
            )

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
        small = overrides(smaller_params(smaller))
        world = {**generator["generator"], **small}
        (request,), _ = load_problem(spec).simulate(spec, world, 1, "none", 1)
        promised = promised_fields((project / "README.md").read_text())
        with serving(project, python=project_python) as server:
            status, body = post(f"{server.url}/predict", request)
            assert status == 200, body
            assert body["model_tag"] == tag
            assert set(body) == promised, f"README.md promises {sorted(promised)}, not {sorted(body)}"
            for command in requests:
                status, body = request_as_written(project, command, server.port)
                assert status == 200, f"{command.where}: {status} {body}"
                assert body["model_tag"] == tag, f"{command.where}: {body}"
                assert set(body) == promised, (
                    f"{command.where}: promises {sorted(promised)}, not {sorted(body)}"
                )
            traffic = run(
                project_python, project, "mlsd.commands", "simulate", "--url", server.url,
                "--count", "300", "--rate", "300", "--concurrency", "4",
                "--params", ",".join(f"generator.{k}={v}" for k, v in small.items()),
            )  # fmt: skip
            assert traffic.returncode == 0, (traffic.stdout + traffic.stderr)[-3000:]
        monitoring = run(project_python, project, "kedro", "run", "--pipelines", "monitoring")
        assert monitoring.returncode == 0, (monitoring.stdout + monitoring.stderr)[-4000:]
        drift = reports(project, "drift.json")
        assert drift["rows"]["current"] >= 300 - 1 + len(requests)  # the simulated requests (plus ours)
    finally:
        shutil.rmtree(root, ignore_errors=True)
