"""The Debian packages the suite runs for real (promtool, the Prometheus server, Chromium).

A missing one fails the test that needs it, naming the package: a skip would pass the run without
the check. `make test` installs them (its ``test-tools`` step), so only a run outside it can miss one.
"""

from __future__ import annotations

import shutil

import pytest


def required(binary: str, package: str) -> str:
    """The path of ``binary``; fails the test when it is not on the PATH."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed: it comes with Debian's {package} package, which `make test` "
            f"installs (or: apt-get install {package})"
        )
    return path
