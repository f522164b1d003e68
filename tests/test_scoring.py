"""Batch scoring (mlsd.scoring): Ray Data's scores are the single-process scores, row for row, for
a table in memory and for a parquet folder Ray Data reads itself; for a classifier graph and an
uplift graph alike."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsd.export import SCORE_OUTPUT, to_onnx
from mlsd.scoring import BatchScoringParams, score_dataset, score_in_process
from mlsd.spec import ModelInput
from mlsd.training import RayParams, get_family, model_frame
from tests.conftest import short_tmp_dir

INPUTS = [
    ModelInput(name="x1", dtype="float32"),
    ModelInput(name="x2", dtype="float32"),
    ModelInput(name="kind", dtype="string", categories=["a", "b", "c"]),
]


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": np.arange(n, dtype="int64") + 100,
            "x1": rng.normal(size=n),
            "x2": rng.integers(0, 50, n).astype("float64"),
            "kind": rng.choice(["a", "b", "c"], n),
        }
    )


@pytest.fixture(scope="module")
def graph() -> bytes:
    train = _table(2000, 0)
    y = (train["x1"] + (train["kind"] == "b") + np.random.default_rng(1).normal(size=2000) > 0.5).astype(int)
    model = get_family("sklearn_logistic").build(INPUTS, {}, 0, 1).fit(model_frame(INPUTS, train), y)
    return bytes(to_onnx(model, INPUTS, name="t").SerializeToString())


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_data_scores_equal_the_single_process_scores_row_for_row(graph: bytes, root: Path) -> None:
    table = _table(25_000, 2).sample(frac=1.0, random_state=3)  # ids out of order: order must hold
    params = BatchScoringParams(batch_size=1000, concurrency=2)
    ray_params = RayParams(num_cpus=2, object_store_memory_mb=200)
    reference = score_in_process(graph, INPUTS, SCORE_OUTPUT, table, ["user_id"], batch_size=777)
    scored = score_dataset(graph, INPUTS, SCORE_OUTPUT, table, ["user_id"], params, ray_params, root)
    assert list(scored.columns) == ["user_id", "score"]
    assert len(scored) == len(table)
    assert (scored["user_id"].to_numpy() == table["user_id"].to_numpy()).all()
    np.testing.assert_array_equal(scored["score"].to_numpy(), reference["score"].to_numpy())
    assert 0 < reference["score"].min() < reference["score"].max() < 1

    folder = root / "table"
    folder.mkdir()
    for i, part in enumerate(np.array_split(table, 3)):
        part.to_parquet(folder / f"part-{i}.parquet", index=False)
    from_files = score_dataset(graph, INPUTS, SCORE_OUTPUT, folder, ["user_id"], params, ray_params, root)
    merged = from_files.merge(reference, on="user_id", suffixes=("", "_ref"), validate="one_to_one")
    assert len(merged) == len(table)
    np.testing.assert_array_equal(merged["score"].to_numpy(), merged["score_ref"].to_numpy())


def test_batch_scoring_params_are_strict() -> None:
    with pytest.raises(ValueError, match="concurency"):
        BatchScoringParams.model_validate({"concurency": 2})
