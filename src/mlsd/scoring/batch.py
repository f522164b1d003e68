"""Score a table with one ONNX graph through Ray Data (``map_batches``), locally or on a cluster.

A campaign, a nightly refresh or a backfill scores every row of a table, not one request: what
counts is rows per second, not latency. Ray Data reads the table in blocks, and a pool of actors
(``concurrency``), each holding one ONNX Runtime session built once, scores them batch by batch;
on a Ray cluster (``ray.address`` in conf, or RAY_ADDRESS) the actors spread over its nodes.
The output keeps the ``keep`` columns (ids) and adds ``score``, in input order.

:func:`score_in_process` is the same scoring in one process (the reference the bench compares
Ray Data with, and what the tests check Ray Data against, row for row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlsd.export import onnx_feeds, onnx_scores, session
from mlsd.spec import ModelInput
from mlsd.training import RayParams, ensure_ray, model_frame

SCORE = "score"


class BatchScoringParams(BaseModel):
    """conf/base/parameters.yml ``batch_scoring:`` block."""

    model_config = ConfigDict(extra="forbid")

    input: str | None = Field(
        default=None,
        description="parquet file or folder to score, relative to the project; null: the training set",
    )
    batch_size: int = Field(default=8192, ge=1, description="rows per ONNX Runtime call")
    concurrency: int = Field(default=2, ge=1, description="scoring actors (one ONNX session each)")
    threads_per_actor: int = Field(default=1, ge=1, description="ONNX Runtime threads in each actor")


class OnnxBatchScorer:
    """A Ray Data ``map_batches`` callable: one ONNX session per actor, pandas batch in and out.

    Args:
        graph: the serialized ONNX model.
        inputs: its inputs, in graph order (the spec's model inputs).
        output: the graph output holding the score.
        keep: columns copied from the input batch to the output (e.g. the entity id).
        threads: ONNX Runtime threads of this actor's session.
    """

    def __init__(
        self, graph: bytes, inputs: list[ModelInput], output: str, keep: list[str], threads: int = 1
    ) -> None:
        self.inputs, self.output, self.keep = inputs, output, keep
        self.session = session(graph, threads=threads)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        feeds = onnx_feeds(self.inputs, model_frame(self.inputs, batch))
        out = batch[self.keep].reset_index(drop=True)
        out[SCORE] = onnx_scores(self.session, feeds, self.output).astype(np.float64)
        return out


def score_in_process(
    graph: bytes,
    inputs: list[ModelInput],
    output: str,
    table: pd.DataFrame,
    keep: list[str],
    batch_size: int,
    threads: int = 1,
) -> pd.DataFrame:
    """The table scored in this process, ``batch_size`` rows per ONNX Runtime call on ``threads``."""
    scorer = OnnxBatchScorer(graph, inputs, output, keep, threads=threads)
    parts = [scorer(table.iloc[i : i + batch_size]) for i in range(0, len(table), batch_size)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*keep, SCORE])


def score_dataset(
    graph: bytes,
    inputs: list[ModelInput],
    output: str,
    table: pd.DataFrame | str | Path,
    keep: list[str],
    params: BatchScoringParams,
    ray_params: RayParams,
    root: Path | None = None,
) -> pd.DataFrame:
    """Score ``table`` (a frame, or a parquet path Ray Data reads in parallel) with Ray Data.

    Rows come back in input order (Ray Data's ``preserve_order``), so the output lines up with the
    input row for row. Neither the read tasks nor the scoring actors reserve a CPU: how many run
    at once is ``params.concurrency`` (capped at the cluster's CPUs), not Ray's CPU accounting.
    With reservations, actors of an earlier dataset that Ray had not torn down yet, or a Ray this
    process joined with fewer CPUs, held every CPU and the read tasks never ran: the job hung.
    """
    import ray.data

    cluster = ensure_ray(ray_params, root)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    columns = list(dict.fromkeys([*keep, *(i.name for i in inputs)]))
    actors = max(1, min(params.concurrency, int(cluster["cpus"]) // params.threads_per_actor))
    dataset: Any
    if isinstance(table, pd.DataFrame):
        dataset = ray.data.from_pandas(table[columns])
    else:
        dataset = ray.data.read_parquet(str(table), num_cpus=0).select_columns(columns)
    scored = dataset.map_batches(
        OnnxBatchScorer,
        fn_constructor_kwargs={
            "graph": graph,
            "inputs": inputs,
            "output": output,
            "keep": keep,
            "threads": params.threads_per_actor,
        },
        batch_size=params.batch_size,
        batch_format="pandas",
        concurrency=actors,
        num_cpus=0,
    )
    frame: Any = scored.to_pandas()
    return frame.reset_index(drop=True)
