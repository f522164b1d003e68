"""The documentation is tested: every command the repository's pages show is run here.

The pages are the root README, docs/*.md, monitoring/README.md and cookiecutter/README.md (a
generated project's README is run by tests/test_template.py the same way). Each command a page
shows (see tests/doc_commands.py) must match one play below: either it is run, as written, in a
copy of a built project, against real servers on free loopback ports, or the play says why this
suite does not run it and which test runs it instead. A command no play knows fails the fast test;
a command that fails when run fails the slow one, naming the page and line.

What a play may change in a command, and nothing else: the port of a server (each gets a free
one), a placeholder (``<version>``, ``<head>``, ``[--apply]``) replaced by a real value, and a
simulated request count capped so the run stays small. ``make run`` runs on small data because
the test project's conf/local sets the generator's size, as a user's conf/local may.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsd.telemetry import TELEMETRY_OFF
from tests.conftest import FIXTURE_GATE, ROOT, SMALL, _write_small_data_gate, short_tmp_dir
from tests.doc_commands import VENV, DocCommand, doc_commands, reader_venv
from tests.server import free_port, get, wait_until

PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "monitoring" / "README.md",
        ROOT / "cookiecutter" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
MAX_SIMULATED = 400
"""Simulated requests per `mlsd simulate` here: enough for every monitoring path, a few seconds."""


@dataclass(frozen=True)
class Play:
    """How the suite treats the commands that fully match ``pattern``: ``run`` them with an
    action of :class:`DocSession`, or name in ``elsewhere`` the reason and the test that does."""

    pattern: str
    run: str | None = None
    elsewhere: str | None = None


PLAYS = [
    Play(r"make test", elsewhere="the command that runs this suite (.ci/run runs it)"),
    Play(
        r"make bench.*|.*bench/bench_\w+\.py.*",
        elsewhere="benchmarks: `make bench`, outside CI's time budget",
    ),
    Play(r"make install && .*", elsewhere="benchmarks: `make bench`, outside CI's time budget"),
    Play(r"make run", run="foreground"),
    Play(r"\.venv/bin/kedro run( .*)?", run="foreground"),
    Play(r"make monitor", run="foreground"),
    Play(r"make serve", run="serve"),
    Play(r"make dashboards|\.venv/bin/evidently ui .*", run="dashboards"),
    Play(r"\.venv/bin/mlsd monitor exporter.*", run="exporter"),
    Play(r"curl .*", run="request"),
    Play(r"\.venv/bin/mlsd (models|rollout|design|simulate).*", run="foreground"),
    Play(r"BENTOML_HOME=\S+ \.venv/bin/bentoml models list", run="foreground"),
    Play(r"cd feature_repo", run="cd"),
    Play(r"\.\./\.venv/bin/feast -f feature_store\.production\.yaml .*", run="production"),
    Play(r"\.\./\.venv/bin/feast .*", run="foreground"),
    Play(
        r"\.venv/bin/ray .*|RAY_ADDRESS=\S+ \.venv/bin/kedro run .*",
        elsewhere="tests/test_ray_cluster.py runs the README's cluster lines (not `ray stop`: it would stop "
        "every Ray on the machine; its nodes are stopped by PID, as the README advises)",
    ),
    Play(r"cookiecutter .*", run="render"),
    Play(r"cd \S+ && make run && make test", run="generated"),
]


def play_for(command: DocCommand) -> Play:
    matches = [play for play in PLAYS if re.fullmatch(play.pattern, command.text)]
    assert matches, f"{command.where}: `{command.text}` is shown, but no documentation test runs it"
    return matches[0]


def page_commands() -> list[DocCommand]:
    return [command for page in PAGES for command in doc_commands(page, ROOT)]


def test_every_documented_command_is_run_or_says_where() -> None:
    commands = page_commands()
    assert len(commands) > 30, "the extraction found too few commands: tests/doc_commands.py broke"
    for command in commands:
        play_for(command)


def test_an_unknown_command_in_a_page_fails_by_name(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text("Run:\n\n```\nmake run\n.venv/bin/mlsd modles list\nmake srve\n```\n")
    unknown = [
        c for c in doc_commands(page, tmp_path) if not any(re.fullmatch(p.pattern, c.text) for p in PLAYS)
    ]
    assert [(c.where, c.text) for c in unknown] == [
        ("README.md:5", ".venv/bin/mlsd modles list"),
        ("README.md:6", "make srve"),
    ]


def test_a_documented_command_that_fails_fails_the_play_by_page_and_line(tmp_path: Path) -> None:
    """A command that matches a play but is wrong (an option the tool does not have) fails when
    the slow test runs it, naming where the page shows it."""
    page = tmp_path / "README.md"
    page.write_text("List them:\n\n```\n.venv/bin/mlsd models list --jsno\n```\n")
    (tmp_path / ".venv").symlink_to(VENV)
    (wrong,) = doc_commands(page, tmp_path)
    with pytest.raises(AssertionError, match=r"README\.md:4: `\.venv/bin/mlsd models list --jsno` exited 2"):
        DocSession(tmp_path, tmp_path).play(wrong)


def test_the_cluster_test_runs_the_readme_s_ray_commands() -> None:
    from tests.test_ray_cluster import readme_command

    for role in ("head", "worker", "train", "stop"):
        assert play_for(DocCommand(readme_command(role), "README.md")).elsewhere is not None


@dataclass
class DocSession:
    """A built project a reader is working in: its own data, this venv as its `.venv`, servers on
    free ports; the state the commands need (the served port, the registered versions)."""

    project: Path
    logs: Path
    cwd: Path = field(init=False)
    port: int = field(default_factory=free_port)
    serving: str | None = None
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    services: dict[str, str] = field(default_factory=dict)
    """The production profile's variables (README: Profiles), pointing at the test's databases."""
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cwd = self.project

    # ---- what a play may change in a command
    def adapt(self, text: str) -> str:
        """The command with this session's ports, real placeholder values and capped counts."""
        text = re.sub(r"127\.0\.0\.1:3000\b", f"127.0.0.1:{self.port}", text)
        text = re.sub(r"--count (\d+)", lambda m: f"--count {min(int(m[1]), MAX_SIMULATED)}", text)
        if "<version>" in text:
            text = text.replace("<version>", self.candidate_version())
        return text.replace(" [--apply]", " --apply")

    def candidate_version(self) -> str:
        """A registered version that is not stable (a `make run` after the first registers one)."""
        listed = self.shell(".venv/bin/mlsd models list --json", check=True)
        versions = json.loads(listed.stdout)
        candidates = [v["tag"].split(":", 1)[1] for v in versions if not v["stable"]]
        assert candidates, f"no candidate version to promote or start as a canary: {listed.stdout}"
        return str(candidates[-1])

    def env(self) -> dict[str, str]:
        return {**os.environ, **TELEMETRY_OFF, "COLUMNS": "250"}

    def shell(
        self, text: str, check: bool = False, timeout: float = 600, where: str = ""
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            output = (proc.stdout + proc.stderr)[-4000:]
            assert proc.returncode == 0, f"{where}: `{text}` exited {proc.returncode}:\n{output}"
        return proc

    def background(self, name: str, text: str, ready: Callable[[], bool]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {text}"], cwd=self.cwd, env=self.env(), stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        self.servers.append(proc)

        def up() -> bool:
            assert proc.poll() is None, f"`{text}` exited {proc.returncode}:\n{self.log(name)}"
            return ready()

        wait_until(up, 120, f"`{text}` ready", every=0.1)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for proc in reversed(self.servers):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in self.servers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)

    # ---- the plays' actions
    def foreground(self, command: DocCommand) -> None:
        self.shell(self.adapt(command.text), check=True, where=command.where)

    def serve(self, command: DocCommand) -> None:
        """`make serve` as written: the reader's conf/local sets `serving.port`, which `make serve`
        and `mlsd simulate` both read. A page shows it once per section: one service serves them."""
        if self.serving is not None:
            return
        port = self.port
        self.serving = command.text
        self.background("serve", command.text, lambda: _answers(f"http://127.0.0.1:{port}/readyz"))

    def dashboards(self, command: DocCommand) -> None:
        port = free_port()
        text = (
            f"{command.text} PORT={port}"
            if command.text.startswith("make")
            else f"{command.text} --port {port}"
        )
        self.background(f"dashboards-{port}", text, lambda: _answers(f"http://127.0.0.1:{port}/"))

    def exporter(self, command: DocCommand) -> None:
        port = free_port()
        text = re.sub(r" \[.*$", "", command.text) + f" --port {port}"
        self.background(f"exporter-{port}", text, lambda: _answers(f"http://127.0.0.1:{port}/metrics"))

    def request(self, command: DocCommand) -> None:
        """A request the page shows "once `make serve` runs": it starts the service if no command
        did yet, then expects an answer with the model's tag."""
        self.serve(DocCommand("make serve", command.where))
        answer = self.shell(self.adapt(command.text), check=True, where=command.where).stdout
        body = json.loads(answer)
        assert {"model_tag", "request_id"} <= set(body), f"{command.where}: {answer}"

    def production(self, command: DocCommand) -> None:
        """A production-profile command, with the profile's variables set as the README says."""
        assert self.services, "the production profile's variables are not set for this session"
        env = {**self.env(), **self.services}
        proc = subprocess.run(
            ["bash", "-c", command.text], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=600
        )
        output = (proc.stdout + proc.stderr)[-4000:]
        assert proc.returncode == 0, f"{command.where}: `{command.text}` exited {proc.returncode}:\n{output}"

    def cd(self, command: DocCommand) -> None:
        self.cwd = self.project / command.text.split()[1]

    def render(self, command: DocCommand) -> None:
        """`cookiecutter` as a reader runs it, from this checkout instead of GitHub (the same
        files: nothing is fetched), into a folder of its own; an asking run takes the defaults."""
        self.cwd = self.logs.parent / f"rendered-{len(self.ran)}"
        self.cwd.mkdir()
        (self.cwd / "cookiecutter").symlink_to(ROOT / "cookiecutter")  # `cookiecutter ./cookiecutter`
        text = command.text.replace("gh:org/mlsd-template", str(ROOT)).replace('"$PWD"', str(ROOT))
        config = self.cwd / "cookiecutter-config.yml"
        config.write_text(
            yaml.safe_dump({"cookiecutters_dir": str(self.cwd / "cc"), "replay_dir": str(self.cwd / "r")})
        )
        path = f"{VENV / 'bin'}:{os.environ['PATH']}"  # the pinned cookiecutter, as the README installs it
        proc = subprocess.run(
            ["bash", "-c", text], cwd=self.cwd, input="\n" * 20, capture_output=True, text=True, timeout=300,
            env={**self.env(), "PATH": path, "COOKIECUTTER_CONFIG": str(config)},
        )  # fmt: skip
        assert proc.returncode == 0, (
            f"{command.where}: `{text}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
        made = [p for p in self.cwd.iterdir() if (p / "conf" / "base" / "problem.yml").exists()]
        assert len(made) == 1, f"{command.where}: `{text}` made {made}"

    def generated(self, command: DocCommand) -> None:
        """`cd NAME && make run && make test` in the project the page rendered just before, with
        this venv as its `.venv` and its own package on the path (what `make install` adds)."""
        target = self.cwd / command.text.split()[1]
        assert (target / "Makefile").exists(), f"{command.where}: nothing rendered at {target}"
        problem = yaml.safe_load((target / "conf" / "base" / "problem.yml").read_text())["problem"]["name"]
        smoke = yaml.safe_load(
            (ROOT / "cookiecutter" / "templates" / "problems" / problem / "smoke.yml").read_text()
        )
        reader_venv(target)
        _small_data(target, smoke["params"], smoke["gate"])
        env = {**self.env(), "PYTHONPATH": str(target / "src")}
        proc = subprocess.run(
            ["bash", "-c", command.text], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, (
            f"{command.where}: exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )

    def play(self, command: DocCommand) -> None:
        """Run ``command`` with its play's action; a command this session already ran as written
        (another page shows it too) is not run again: it has worked here."""
        chosen = play_for(command)
        if chosen.run is None or (command.text in self.ran and chosen.run == "foreground"):
            return
        getattr(self, chosen.run)(command)
        self.ran.append(command.text)


def _answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:
        return False


def _small_data(project: Path, params: str, gate: float) -> None:
    """A reader's conf/local for small data: the `--params` items ``params`` (``block.key=value``,
    comma-separated) as parameters, every oracle-gap gate at ``gate`` and no must-beat-baseline
    gate (tests.conftest.FIXTURE_GATE says why). These tests check that the documented commands
    work; tests/test_pipeline.py and tests/test_training.py check the gates."""
    local: dict[str, Any] = {}
    for item in filter(None, params.split(",")):
        key, value = item.split("=", 1)
        *blocks, name = key.split(".")
        node = local
        for block in blocks:
            node = node.setdefault(block, {})
        node[name] = yaml.safe_load(value)
    (project / "conf" / "local" / "parameters_docs.yml").write_text(yaml.safe_dump(local))
    _write_small_data_gate(project, gate, baseline_gate=False)


def doc_project(built: Path, root: Path, port: int) -> Path:
    """A copy of the built project with everything a reader has (Makefile, deployment/,
    monitoring/, docs/, bench/), this venv as its `.venv` and the service on ``port``."""
    project = Path(shutil.copytree(built, root / "p", ignore=shutil.ignore_patterns(".ray")))
    for name in ("Makefile", "requirements.lock", "pyproject.toml", ".telemetry"):
        shutil.copy2(ROOT / name, project / name)
    for name in ("deployment", "monitoring", "docs", "bench"):
        shutil.copytree(
            ROOT / name,
            project / name,
            ignore=shutil.ignore_patterns("__pycache__", "workspace"),
            dirs_exist_ok=True,
        )
    reader_venv(project)
    # The built project's data with another training seed: `make run` registers another version.
    _small_data(project, f"{SMALL},training.seed=8,serving.port={port}", FIXTURE_GATE)
    return project


@pytest.fixture(scope="module")
def session(built_project: Path) -> Iterator[DocSession]:
    root = short_tmp_dir()
    logs = root / "logs"
    logs.mkdir()
    port = free_port()
    docs = DocSession(doc_project(built_project, root, port), logs, port=port)
    yield docs
    docs.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/monitoring.md", "monitoring/README.md"])
def test_a_page_s_commands_work_as_written(
    page: str, session: DocSession, postgres_url: str, redis_url: str
) -> None:
    session.cwd = session.project
    session.services = {"MLSD_REDIS_URL": redis_url, "MLSD_FEAST_REGISTRY_URL": postgres_url}
    for command in doc_commands(ROOT / page, ROOT):
        session.play(command)
    assert session.ran, f"{page}: no command was run"
