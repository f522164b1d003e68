"""The shell commands a markdown page shows, as a reader would copy them.

A command is a line of a fenced block with no language or a shell one (``bash``, ``sh``,
``console``, ``shell``), with backslash continuations joined and a trailing ``# comment`` cut, or
an inline code span in the prose that starts with the project's venv (``.venv/bin/...``): those
are the commands a reader is told to type. The documentation tests run each of them.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

VENV = Path(sys.prefix)
"""This test run's venv: the pinned dependencies and the local mlsd library, as `make install` makes."""
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
INLINE = re.compile(r"`((?:\.\./)?\.venv/bin/[^`\n]+)`")


@dataclass(frozen=True)
class DocCommand:
    """One command of a page: ``text`` as a reader types it, ``where`` is ``file:line``."""

    text: str
    where: str


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` after white space, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _fenced(lines: list[str], name: str) -> list[DocCommand]:
    commands: list[DocCommand] = []
    shell, inside, pending, start = False, False, "", 0
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence:
            inside = not inside
            shell = inside and fence[2] in SHELL_BLOCKS
            continue
        if not (inside and shell):
            continue
        text = strip_comment(line.strip()) if not pending else line.strip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1].strip() + " "
            continue
        text = (pending + strip_comment(text)).strip()
        pending = ""
        if text:
            commands.append(DocCommand(text, f"{name}:{start}"))
    return commands


def _inline(lines: list[str], name: str) -> list[DocCommand]:
    commands: list[DocCommand] = []
    inside = False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            commands += [DocCommand(match.strip(), f"{name}:{number}") for match in INLINE.findall(line)]
    return commands


def doc_commands(page: Path, root: Path) -> list[DocCommand]:
    """Every command ``page`` shows, in page order (fenced blocks, then inline spans)."""
    lines = page.read_text().splitlines()
    name = str(page.relative_to(root))
    found = _fenced(lines, name) + _inline(lines, name)
    return sorted(found, key=lambda command: int(command.where.rsplit(":", 1)[1]))


def reader_venv(project: Path) -> None:
    """This venv as ``project``'s `.venv` (what its `.venv/bin/...` commands run), with the stamp
    `make` checks newer than the files it installs from, so `make run` and `make test` use it as
    installed. A generated project's own package is not in it: run its commands with
    ``PYTHONPATH=project/src`` (what `make install` adds)."""
    (project / ".venv").symlink_to(VENV)
    stamp = VENV / ".installed"
    assert stamp.exists(), f"{stamp} is missing: run the suite through `make test` (it installs the venv)"
    before = stamp.stat().st_mtime - 60
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(project / name, (before, before))
