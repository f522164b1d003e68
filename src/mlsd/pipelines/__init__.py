"""Kedro pipelines: thin nodes that turn parameters and datasets into calls to the library."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pandas as pd


def load_partitions(
    partitions: Mapping[str, Callable[[], pd.DataFrame] | pd.DataFrame],
) -> dict[str, pd.DataFrame]:
    """A PartitionedDataset loads as name -> loader; in memory it is name -> frame. Accept both."""
    return {name: part() if callable(part) else part for name, part in partitions.items()}


def as_dict(value: Any) -> dict[str, Any]:
    """Kedro parameters arrive as dict-like objects; the library wants plain dicts."""
    return dict(value or {})


TASK_NODES: dict[str, str] = {
    "retrieval": "mlsd.pipelines.retrieval",
    "text_retrieval": "mlsd.pipelines.text_retrieval",
    "uplift": "mlsd.pipelines.uplift",
    "multilabel": "mlsd.pipelines.multilabel",
}
"""Tasks whose nodes differ from the binary-classification ones: task -> module with a ``NODES``
dict (node function name -> its version for that task). Tasks not listed use the nodes as written.
A spec with a ``text_retrieval`` block looks in ``text_retrieval`` first, then in its task's."""

F = TypeVar("F", bound=Callable[..., Any])


def by_task(fn: F) -> F:
    """Make a node whose first input is the problem spec run its task's version, if the task has one.

    The pipelines stay one static graph (same datasets, same names) for every task; only what a
    node computes changes with ``problem.task``.
    """

    @functools.wraps(fn)
    def node(problem: Mapping[str, Any], *args: Any) -> Any:
        keys = ["text_retrieval"] if problem.get("text_retrieval") else []
        impl = fn
        for key in [*keys, str(problem.get("task"))]:
            module = TASK_NODES.get(key)
            nodes = {} if module is None else importlib.import_module(module).NODES
            if fn.__name__ in nodes:
                impl = nodes[fn.__name__]
                break
        return impl(problem, *args)

    return node  # type: ignore[return-value]
