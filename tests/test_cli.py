"""The `mlsd` command's own errors: a message that names the problem, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import copy_project, mlsd_cli


def test_a_conf_block_that_does_not_fit_its_settings_is_named_without_a_traceback(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    (project / "conf" / "local" / "parameters_cli.yml").write_text(
        yaml.safe_dump({"registry": {"promote": "sometimes"}})
    )

    result = mlsd_cli(project, "models", "list")

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("mlsd: invalid configuration in conf/:"), result.stderr
    assert "promote" in result.stderr
    assert "Traceback" not in result.stderr
