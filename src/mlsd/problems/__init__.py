"""Problem modules: what a spec cannot say (the generator and problem-specific feature code).

A problem module is any importable module named by ``spec.problem_module`` that defines the
three functions of :class:`ProblemModule`. The built-in ones live in this package; a generated
project points its spec at its own module, so adding a problem touches no library file.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, cast

import pandas as pd

from mlsd.errors import SpecError
from mlsd.spec import ProblemSpec

Tables = dict[str, pd.DataFrame]


class ProblemModule(Protocol):
    """The functions a problem module provides; each is data in, data out."""

    def generate(self, spec: ProblemSpec, params: Mapping[str, Any]) -> Tables:
        """Synthetic raw tables with the generator's truth in the spec's truth column."""

    def build_events(self, spec: ProblemSpec, raw: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        """One row per labelled event (the spec's events table) from the raw tables."""

    def build_feature_tables(
        self,
        spec: ProblemSpec,
        raw: Mapping[str, pd.DataFrame],
        events: pd.DataFrame,
        params: Mapping[str, Any],
    ) -> Tables:
        """One table per feature view source: join keys, ``event_timestamp`` (UTC), fields."""


_REQUIRED = ("generate", "build_events", "build_feature_tables")


def load_problem(spec: ProblemSpec) -> ProblemModule:
    """Import ``spec.problem_module`` and check it provides the three functions.

    Raises:
        SpecError: if the module cannot be imported or lacks a function.
    """
    try:
        module = importlib.import_module(spec.problem_module)
    except ImportError as exc:
        raise SpecError(
            f"problem_module: cannot import {spec.problem_module!r} ({exc}); "
            "is the project installed (pip install -e .)?"
        ) from None
    missing = [name for name in _REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise SpecError(f"problem_module: {spec.problem_module!r} does not define {missing}")
    return cast(ProblemModule, module)
