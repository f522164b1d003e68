"""Time batch scoring: Ray Data ``map_batches`` against a single-process ONNX Runtime loop.

Both score the same table with the same ONNX graph in one run, so the ratio compares like with
like on this machine. The graph is the spec's model family (conf/base/problem.yml) fitted on a
synthetic table of the spec's model inputs: numbers drawn within each field's bounds, strings
from its allowed values, a label that depends on them non-linearly (so the trees have depth).
The table is tiled to ``ROWS`` rows.

1. Single process: one ONNX Runtime session, ``BATCH`` rows per call, on one thread (the
   reference the ratio is taken against) and on two (what one process gets from the cores).
2. Ray Data: ``ray.data.from_pandas`` -> ``map_batches`` over ``CONCURRENCY`` actors (one
   session on one thread each) -> ``to_pandas``, Ray already started (its start is timed on its
   own). The scores must equal the single-process ones row for row.

Run: .venv/bin/python bench/bench_batch_scoring.py
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlsd.export import SCORE_OUTPUT, to_onnx
from mlsd.scoring import BatchScoringParams, score_dataset, score_in_process
from mlsd.spec import ColumnSpec, load_spec
from mlsd.telemetry import TELEMETRY_OFF
from mlsd.training import RayParams, ensure_ray, get_family, model_frame
from report import ROOT, busy_cores, write

ROWS = 1_000_000
FIT_ROWS = 20_000
BATCH = 8192
CONCURRENCY = 2
REPEATS = 2


def synthetic_inputs(columns: dict[str, ColumnSpec], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of the model inputs within the spec's bounds and allowed values."""
    rng = np.random.default_rng(seed)
    frame = {}
    for name, column in columns.items():
        if column.dtype == "string":
            frame[name] = rng.choice([str(v) for v in column.allowed or ["a", "b"]], n)
        else:
            low = column.min if column.min is not None else 0.0
            high = column.max if column.max is not None else low + 100.0
            frame[name] = rng.uniform(low, min(high, low + 1000.0), n).round()
    return pd.DataFrame(frame)


def nonlinear_label(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """A label that needs splits on several inputs: the sign of a sum of per-column bumps."""
    rng = np.random.default_rng(seed)
    logit = np.zeros(len(frame))
    for name in frame:
        codes = frame[name].rank(pct=True).to_numpy()
        logit += np.sin(6 * codes + rng.uniform(0, 6))
    return (logit + rng.normal(0, 1, len(frame)) > 0).astype(int)


def best_of(fn: Callable[[], pd.DataFrame], repeats: int) -> tuple[pd.DataFrame, float]:
    """The last result and the fastest of ``repeats`` timed calls."""
    best, out = float("inf"), pd.DataFrame()
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    os.environ.update(TELEMETRY_OFF)
    busy = busy_cores()
    spec = load_spec(ROOT / "conf" / "base" / "problem.yml")
    conf = yaml.safe_load((ROOT / "conf" / "base" / "parameters.yml").read_text())
    inputs = spec.model_input_schema()
    columns = {**spec.feature_fields(), **spec.serving.context}
    columns = {i.name: columns[i.name] for i in inputs}
    fit_rows = synthetic_inputs(columns, FIT_ROWS, 0)
    model = get_family(spec.model.family).build(inputs, dict(spec.model.params), 0, 2)
    model.fit(model_frame(inputs, fit_rows), nonlinear_label(fit_rows, 1))
    graph = bytes(to_onnx(model, inputs, name=spec.name).SerializeToString())
    base = synthetic_inputs(columns, ROWS // 10, 2)
    table = pd.concat([base] * 10, ignore_index=True)
    table.insert(0, "row_id", np.arange(len(table), dtype="int64"))

    single, single_s = best_of(
        lambda: score_in_process(graph, inputs, SCORE_OUTPUT, table, ["row_id"], BATCH), REPEATS
    )
    _, threaded_s = best_of(
        lambda: score_in_process(graph, inputs, SCORE_OUTPUT, table, ["row_id"], BATCH, threads=2), REPEATS
    )
    ray_params = RayParams.model_validate(conf["ray"])
    start = time.perf_counter()
    cluster = ensure_ray(ray_params, ROOT)
    ray_init_s = time.perf_counter() - start
    params = BatchScoringParams(batch_size=BATCH, concurrency=CONCURRENCY, threads_per_actor=1)
    scored, ray_s = best_of(
        lambda: score_dataset(graph, inputs, SCORE_OUTPUT, table, ["row_id"], params, ray_params, ROOT),
        REPEATS,
    )
    same = bool(
        (scored["row_id"].to_numpy() == single["row_id"].to_numpy()).all()
        and np.array_equal(scored["score"].to_numpy(), single["score"].to_numpy())
    )
    if not same:
        raise RuntimeError("Ray Data scores differ from the single-process scores")

    results = {
        "single_process_rows_per_s": round(ROWS / single_s),
        "ray_data_rows_per_s": round(ROWS / ray_s),
        "single_process_2threads_rows_per_s": round(ROWS / threaded_s),
        "single_process_s": round(single_s, 3),
        "ray_data_s": round(ray_s, 3),
        "ray_init_s": round(ray_init_s, 2),
        "scores_identical": int(same),
    }
    ratios = {
        "ray_data_vs_single_process_throughput": round(single_s / ray_s, 2),
        "ray_data_vs_single_process_2threads_throughput": round(threaded_s / ray_s, 2),
    }
    cores = os.cpu_count() or 0
    write(
        "batch_scoring",
        ".venv/bin/python bench/bench_batch_scoring.py",
        {
            "problem": spec.name,
            "model": spec.model.family,
            "rows": ROWS,
            "inputs": len(inputs),
            "batch_rows": BATCH,
            "ray_actors": CONCURRENCY,
            "ort_threads_per_actor": 1,
            "ray_num_cpus": cluster["cpus"],
            "repeats_best_of": REPEATS,
            "cores": cores,
            "busy_cores_at_start": round(busy, 2),
        },
        results,
        ratios,
        summary(results, ratios, cores, busy),
    )
    print(results, ratios)


def summary(r: dict[str, float], q: dict[str, float], cores: int, busy: float) -> str:
    """What the measured numbers say (no claim fixed in advance)."""
    noise = (
        f"Other processes kept {busy:.1f} of the {cores} cores busy just before this ran: "
        "treat the timings as noisy. "
        if busy > 0.25
        else ""
    )
    ratio = q["ray_data_vs_single_process_throughput"]
    verdict = "faster than" if ratio > 1.05 else "slower than" if ratio < 0.95 else "on par with"
    why = (
        f"On {cores} cores the actors share them with Ray's own processes and the table is copied "
        "into the object store and back, which one process never pays; Ray Data earns its place "
        "when the table does not fit one process or the actors spread over a cluster's nodes "
        "(ray.address)."
        if ratio < 1
        else f"The {CONCURRENCY} actors score in parallel, which one single-threaded loop cannot."
    )
    return (
        f"{noise}Scoring {ROWS:,} rows with {CONCURRENCY} Ray Data actors "
        f"({r['ray_data_rows_per_s']:,} rows/s) is {verdict} one process looping over ONNX Runtime "
        f"({r['single_process_rows_per_s']:,} rows/s): {ratio}x, scores identical row for row; one "
        f"process with a 2-thread session does {r['single_process_2threads_rows_per_s']:,} rows/s "
        f"({q['ray_data_vs_single_process_2threads_throughput']}x). {why}"
    )


if __name__ == "__main__":
    main()
