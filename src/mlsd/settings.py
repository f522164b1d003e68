"""Kedro project settings: the spec is read as parameters, and parameters merge per key.

``problem*`` files (conf/<env>/problem.yml) join the parameters, so the spec is available to
nodes as ``params:problem`` and an environment can override part of it. A soft merge lets
conf/production change one key of a block without repeating the others.
"""

from typing import Any

from mlsd.hooks import RunTimingsHook, SpecCheckHook

HOOKS = (SpecCheckHook(), RunTimingsHook())

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*", "problem*"],
    },
    "merge_strategy": {"parameters": "soft"},
}
