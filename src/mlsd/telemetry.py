"""Every tool's telemetry switch in one place; the Makefile and .ci/run export the same set.

mlsd sets them (without overriding what the caller chose) before it starts Ray or BentoML, so
the library stays private even when used outside `make`.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "KEDRO_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "GX_ANALYTICS_ENABLED": "false",
}


def telemetry_off() -> None:
    """Set every switch in this process's environment unless it is already set."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
