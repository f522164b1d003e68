"""Time the stages of `make run` (install, generate, validate, features) at the default size.

Baseline in the same run: the point-in-time join that Feast does for the training set, done
again with pandas ``merge_asof`` (backward, per key, TTL as tolerance) on the same data. The
ratio says what Feast's offline store costs over a hand-written join, and the mismatch count
checks that both joins agree value for value.

Run: .venv/bin/python bench/bench_make_run.py   (rewrites data/ like `make run`)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlsd.features import fill_defaults
from mlsd.spec import ProblemSpec, load_spec
from mlsd.telemetry import TELEMETRY_OFF
from report import ROOT, write

VALIDATE = (
    "build_events",
    "validate_inputs",
    "accept_inputs",
    "validate_training_set",
    "accept_training_set",
)
FEATURES = ("build_feature_tables", "apply_feature_store", "build_training_set", "materialize_online")
TRAIN = (
    "split_training_set",
    "tune_model",
    "fit_model",
    "fit_baseline",
    "evaluate_models",
    "export_model",
    "check_parity",
    "approve",
    "register_model",
)


def time_install() -> float:
    """Seconds to create a venv and install the pinned set (pip's cache as this machine has it)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", f"{tmp}/venv"], check=True)
        subprocess.run(
            [
                f"{tmp}/venv/bin/python",
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(ROOT / "requirements.lock"),
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def run_pipeline() -> dict[str, float]:
    env = {**os.environ, **TELEMETRY_OFF}
    kedro = Path(sys.executable).parent / "kedro"
    subprocess.run([str(kedro), "run"], cwd=ROOT, env=env, check=True, capture_output=True)
    return json.loads((ROOT / "data" / "08_reporting" / "run_timings.json").read_text())["node_seconds"]


def pandas_pit_join(spec: ProblemSpec, events: pd.DataFrame) -> pd.DataFrame:
    """The same point-in-time join, by hand: latest feature row at or before each event, within ttl."""
    ts = spec.label.timestamp
    joined = events.sort_values(ts).reset_index(drop=True)
    for fv in spec.feature_views:
        keys = [spec.entity(e).join_key for e in fv.entities]
        table = pd.read_parquet(ROOT / "data" / "04_feature" / f"{fv.source}.parquet")
        table = table.sort_values("event_timestamp")[[*keys, "event_timestamp", *fv.fields]]
        joined = pd.merge_asof(
            joined,
            table,
            left_on=ts,
            right_on="event_timestamp",
            by=keys,
            direction="backward",
            tolerance=pd.Timedelta(fv.ttl) if fv.ttl.total_seconds() else None,
        ).drop(columns="event_timestamp")
    filled, _ = fill_defaults(spec, joined)
    return filled


def main() -> None:
    install_s = time_install()
    nodes = run_pipeline()
    spec = load_spec(ROOT / "conf" / "base" / "problem.yml")
    events = pd.read_parquet(ROOT / "data" / "02_intermediate" / "events.parquet")
    feast_set = pd.read_parquet(ROOT / "data" / "05_model_input" / "training_set.parquet")
    start = time.perf_counter()
    manual = pandas_pit_join(spec, events)
    pandas_s = time.perf_counter() - start
    manual = manual.set_index("imp_id").loc[feast_set["imp_id"]].reset_index()
    mismatches = 0
    for name in spec.feature_fields():
        a, b = feast_set[name].to_numpy(), manual[name].to_numpy()
        same = np.isclose(a, b) if np.issubdtype(a.dtype, np.number) else a == b
        mismatches += int((~same).sum())

    validate_s = sum(nodes[n] for n in VALIDATE)
    features_s = sum(nodes[n] for n in FEATURES)
    train_s = sum(nodes[n] for n in TRAIN)
    results = {
        "install_s": round(install_s, 1),
        "generate_s": nodes["generate"],
        "validate_s": round(validate_s, 2),
        "features_s": round(features_s, 2),
        "feast_apply_s": nodes["apply_feature_store"],
        "feast_pit_join_s": nodes["build_training_set"],
        "pandas_pit_join_s": round(pandas_s, 2),
        "materialize_s": nodes["materialize_online"],
        "train_s": round(train_s, 2),
        "tune_s": nodes["tune_model"],
        "fit_model_s": nodes["fit_model"],
        "pit_join_value_mismatches": mismatches,
        "rows": len(events),
    }
    ratios = {
        "feast_pit_join_per_pandas_merge_asof": round(nodes["build_training_set"] / pandas_s, 1),
        "features_per_generate": round(features_s / nodes["generate"], 1),
    }
    write(
        "make_run_stages",
        "make install && .venv/bin/python bench/bench_make_run.py",
        {
            "rows": len(events),
            "profile": "embedded (parquet, SQLite, file registry)",
            "pip_cache": "as found",
        },
        results,
        ratios,
        "Wall time of each stage of `make run` at the default size (node timings from the Kedro "
        "run's RunTimingsHook). Baseline: the training set's point-in-time join redone with pandas "
        "`merge_asof` on the same data; `pit_join_value_mismatches` counts feature values where the "
        "two joins disagree (0 = identical). `train_s` is the whole training stage (Ray Tune, the Ray "
        "Train fits of model and baseline, evaluation, ONNX export and parity, registration); the "
        "`training` section compares the Ray path with a plain fit.",
    )
    print(json.dumps({"results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
