"""Kedro project settings: the spec is read as parameters, and parameters merge per key.

``problem*`` files (conf/<env>/problem.yml) join the parameters, so the spec is available to
nodes as ``params:problem`` and an environment can override part of it. A soft merge lets
conf/production change one key of a block without repeating the others.

Kedro imports this module before it builds the config loader, so this is where the known
third-party deprecation warnings (:data:`mlsd.hooks.THIRD_PARTY_WARNINGS`) are silenced: one
filter each, by message and module, renewed before each node (:class:`mlsd.hooks.QuietWarningsHook`);
every other warning still shows.
"""

from typing import Any

from mlsd.hooks import QuietWarningsHook, RunTimingsHook, SpecCheckHook, quiet_third_party_warnings

quiet_third_party_warnings()

HOOKS = (SpecCheckHook(), RunTimingsHook(), QuietWarningsHook())

CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*", "problem*"],
    },
    "merge_strategy": {"parameters": "soft"},
}
