"""Read a project's Kedro parameters outside ``kedro run`` (the ``mlsd`` command, the server).

Both read the same conf/<env> files with the same loader settings as ``kedro run``, so the CLI,
the server and the pipeline agree on where models, features and logs are.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlsd.errors import ConfigError


def load_config(project: Path, key: str, env: str | None = None) -> dict[str, Any]:
    """The merged ``key`` config (``parameters``, spec included as ``problem``; ``catalog``) of
    ``project`` for Kedro env ``env``.

    Raises:
        ConfigError: the folder has no conf/ or a config file does not parse.
    """
    from kedro.config import OmegaConfigLoader

    from mlsd.settings import CONFIG_LOADER_ARGS

    conf = project / "conf"
    if not (conf / "base").is_dir():
        raise ConfigError(f"{project} is not an mlsd project: {conf / 'base'} does not exist")
    with warnings.catch_warnings():  # kedro 1.7 calls an omegaconf API that warns it is deprecated
        warnings.filterwarnings("ignore", message="register_new_resolver", category=UserWarning)
        loader = OmegaConfigLoader(conf_source=str(conf), env=env, **CONFIG_LOADER_ARGS)
        try:
            return dict(loader[key])
        except Exception as exc:  # omegaconf/yaml raise many types; name the folder
            raise ConfigError(f"cannot read the {key} in {conf} (env {env or 'local'}): {exc}") from exc


def load_parameters(project: Path, env: str | None = None) -> dict[str, Any]:
    """The merged parameters (spec included, as ``problem``) of ``project`` for Kedro env ``env``."""
    return load_config(project, "parameters", env)


def project_path(project: Path, value: str | Path) -> Path:
    """``value`` as an absolute path: relative paths in conf are relative to the project root."""
    path = Path(value)
    return path if path.is_absolute() else project / path
