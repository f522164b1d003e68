"""Training units on small synthetic data: time split, model frames, fingerprints, families, search space.

No Ray is started here: fit_on_ray / search / ensure_ray run in the slow pipeline tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlsd.errors import ConfigError, SpecError, TrainingError
from mlsd.spec import ModelInput, load_spec
from mlsd.training import FAMILIES, Family, RayParams, fingerprint, get_family, model_frame, time_split
from mlsd.training.families import logistic_pipeline
from mlsd.training.runtime import _MAX_TEMP_DIR, _temp_dir, cluster_address
from mlsd.training.search import tune_space
from tests.synthetic import model_input_rows

SPEC_PATH = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"
SPEC = load_spec(SPEC_PATH)
INPUTS = SPEC.model_input_schema()
NAMES = [i.name for i in INPUTS]
START = pd.Timestamp("2026-01-01", tz="UTC")
FAST_LGBM = {"n_estimators": 40, "num_leaves": 7, "min_child_samples": 20}


def synthetic(n: int = 3000, seed: int = 0, days: int = 10) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of the spec's model inputs plus ``ts``/``clicked``, and the true click probability.

    Numbers are int64 or float64 (as the training set holds them), strings come from each input's
    categories; the label is drawn from a known logistic probability of a few inputs.
    """
    rng = np.random.default_rng(seed)
    frame, truth = model_input_rows(INPUTS, n, rng)
    frame["clicked"] = (rng.random(n) < truth).astype(np.int64)
    frame["ts"] = START + pd.to_timedelta(rng.uniform(0, days * 86400, n), unit="s")
    frame["imp_id"] = np.arange(n)
    return frame, truth


# --- time_split ----------------------------------------------------------------------------------


def test_time_split_is_by_time_without_overlap_and_holdout_is_last() -> None:
    frame, _ = synthetic()
    frame = frame.sample(frac=1.0, random_state=1)  # rows out of time order
    split = time_split(frame, "ts", holdout=timedelta(days=2), validation=timedelta(days=3))

    end = frame["ts"].max()
    assert split.holdout_start == end - pd.Timedelta(days=2)
    assert split.valid_start == end - pd.Timedelta(days=5)
    assert split.train["ts"].max() < split.valid_start <= split.valid["ts"].min()
    assert split.valid["ts"].max() < split.holdout_start <= split.holdout["ts"].min()
    assert split.holdout["ts"].max() == end
    # every row lands in exactly one part
    ids = [*split.train["imp_id"], *split.valid["imp_id"], *split.holdout["imp_id"]]
    assert sorted(ids) == sorted(frame["imp_id"])
    # roughly 5/10, 3/10 and 2/10 of uniformly spread rows
    n = len(frame)
    assert abs(len(split.train) / n - 0.5) < 0.05
    assert abs(len(split.valid) / n - 0.3) < 0.05
    assert abs(len(split.holdout) / n - 0.2) < 0.05
    for part in (split.train, split.valid, split.holdout):
        assert part["ts"].is_monotonic_increasing


@pytest.mark.parametrize(
    ("holdout", "validation", "empty"),
    [
        (timedelta(days=30), timedelta(days=1), "['train', 'valid']"),
        (timedelta(days=1), timedelta(days=30), "['train']"),
        (timedelta(days=0), timedelta(days=1), None),
    ],
)
def test_time_split_names_the_empty_parts(
    holdout: timedelta, validation: timedelta, empty: str | None
) -> None:
    frame, _ = synthetic(n=500)
    if empty is None:
        # a zero-length holdout still holds the last row (>= end): nothing is empty
        split = time_split(frame, "ts", holdout=holdout, validation=validation)
        assert len(split.holdout) >= 1
        return
    with pytest.raises(TrainingError) as info:
        time_split(frame, "ts", holdout=holdout, validation=validation)
    message = str(info.value)
    assert f"leaves {empty} empty" in message
    assert "500 rows" in message


# --- model_frame ---------------------------------------------------------------------------------


def test_model_frame_keeps_spec_order_and_dtypes() -> None:
    frame, _ = synthetic(n=200)
    shuffled = frame[list(reversed(frame.columns))].copy()  # wrong order, extra columns
    shuffled["country"] = shuffled["country"].astype("category")
    shuffled.index = shuffled.index + 1000

    out = model_frame(INPUTS, shuffled)

    assert list(out.columns) == NAMES
    assert list(out.index) == list(shuffled.index)
    for item in INPUTS:
        column = out[item.name]
        if item.dtype == "string":
            assert column.dtype == object
            assert all(type(v) is str for v in column)
            assert list(column) == list(shuffled[item.name].astype(str))
        else:
            assert column.dtype == np.float32
            np.testing.assert_array_equal(column.to_numpy(), shuffled[item.name].to_numpy(np.float32))
    assert "clicked" not in out
    assert "ts" not in out


def test_model_frame_names_a_missing_column() -> None:
    frame, _ = synthetic(n=50)
    with pytest.raises(TrainingError, match=r"\['uc_ctr_7d'\] are not columns"):
        model_frame(INPUTS, frame.drop(columns=["uc_ctr_7d"]))


@pytest.mark.parametrize("column", ["age", "device"])
def test_model_frame_names_a_column_with_missing_values(column: str) -> None:
    frame, _ = synthetic(n=50)
    frame[column] = frame[column].astype(object)
    frame.loc[[3, 7, 11], column] = None
    with pytest.raises(TrainingError, match=rf"model input '{column}' has 3 missing values"):
        model_frame(INPUTS, frame)


def test_an_entity_without_history_gets_the_same_model_inputs_in_training_as_online() -> None:
    """Training fills every feature the point-in-time join found no row for with the spec default
    (``fill_defaults``); the online reader gives an entity the store does not know its defaults:
    the graph gets the same arrays from both, so a new user is scored as training saw new users.
    tests/test_reliability.py checks the same through the real join and a real server."""
    from types import SimpleNamespace

    from mlsd.export import onnx_feeds
    from mlsd.features import fill_defaults
    from mlsd.serving.online import OnlineFeatures

    provider = SimpleNamespace(online_read=lambda config, table, keys, fields: [(None, None)] * len(keys))
    store = SimpleNamespace(
        project="units",
        config=SimpleNamespace(online_store=SimpleNamespace(type="sqlite")),
        _get_provider=lambda: provider,
        get_feature_view=lambda name: SimpleNamespace(name=name),
    )
    request = {"user_id": 7, "ad_id": 3, "category": "auto", "position": 2, "hour": 13}
    reader = OnlineFeatures(store, SPEC)
    try:
        online = reader.read([request])
    finally:
        reader.close()
    stored = list(SPEC.feature_fields())
    assert online.missing == [stored]
    # what the join leaves for an entity without feature rows: every feature null
    joined = pd.DataFrame({**{k: [v] for k, v in request.items()}, **{name: [None] for name in stored}})
    trained, missing = fill_defaults(SPEC, joined)
    assert missing == dict.fromkeys(stored, 1)
    served = pd.DataFrame({**{k: [v] for k, v in request.items()}, **online.values})
    training_feeds, online_feeds = onnx_feeds(INPUTS, trained), onnx_feeds(INPUTS, served)
    for name in NAMES:
        assert training_feeds[name].tolist() == online_feeds[name].tolist(), name


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_tracks_values_order_and_columns() -> None:
    frame, _ = synthetic(n=300)
    base = fingerprint(frame)

    assert fingerprint(synthetic(n=300)[0]) == base  # same content built again
    assert fingerprint(frame.copy()) == base
    assert fingerprint(frame.set_axis(frame.index + 7)) == base  # the index is not content

    changed = frame.copy()
    changed.loc[42, "age"] += 1
    assert fingerprint(changed) != base

    changed = frame.copy()
    changed.loc[5, "country"] = "BR" if frame.loc[5, "country"] != "BR" else "US"
    assert fingerprint(changed) != base

    reordered = frame.iloc[[1, 0, *range(2, len(frame))]].reset_index(drop=True)
    assert fingerprint(reordered) != base

    assert fingerprint(frame.rename(columns={"age": "age_years"})) != base
    assert len(base) == 16


# --- families ------------------------------------------------------------------------------------


def _fit(name: str, params: Mapping[str, Any], seed: int) -> tuple[Any, pd.DataFrame, np.ndarray]:
    frame, truth = synthetic()
    x = model_frame(INPUTS, frame)
    model = get_family(name).build(INPUTS, params, seed, 1)
    model.fit(x.iloc[:2000], frame["clicked"].iloc[:2000])
    return model, x, truth


@pytest.mark.parametrize(("name", "params"), [("lightgbm", FAST_LGBM), ("sklearn_logistic", {"C": 1.0})])
def test_builtin_families_fit_and_score(name: str, params: dict[str, Any]) -> None:
    model, x, truth = _fit(name, params, seed=0)
    frame, _ = synthetic()
    proba = model.predict_proba(x.iloc[2000:])

    assert proba.shape == (1000, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert ((proba >= 0) & (proba <= 1)).all()
    # it learnt the signal: AUC on unseen rows close to the generator's own probability
    y = frame["clicked"].iloc[2000:]
    auc, oracle = roc_auc_score(y, proba[:, 1]), roc_auc_score(y, truth[2000:])
    assert auc > 0.7
    assert auc > oracle - 0.08
    # and the probabilities follow the truth
    assert np.corrcoef(proba[:, 1], truth[2000:])[0, 1] > 0.7


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(SpecError) as info:
        get_family("xgboost")
    message = str(info.value)
    assert "'xgboost'" in message
    for known in FAMILIES:
        assert known in message


def custom_family() -> Family:
    return Family(logistic_pipeline)


def not_a_family() -> dict[str, str]:
    return {"build": "nope"}


def test_family_by_module_function() -> None:
    family = get_family(f"{__name__}:custom_family")
    assert isinstance(family, Family)
    assert family.build is logistic_pipeline
    assert family.ray_trainer is None

    frame, _ = synthetic(n=500)
    model = family.build(INPUTS, {}, 0, 1).fit(model_frame(INPUTS, frame), frame["clicked"])
    assert model.predict_proba(model_frame(INPUTS, frame)).shape == (500, 2)


def test_family_factory_returning_something_else_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"returned dict, not Family"):
        get_family(f"{__name__}:not_a_family")


@pytest.mark.parametrize("name", [f"{__name__}:no_such_factory", "mlsd_no_such_module:family"])
def test_family_that_cannot_be_loaded_is_a_spec_error(name: str) -> None:
    with pytest.raises(SpecError, match=r"cannot load it"):
        get_family(name)


def test_lightgbm_family_is_seeded() -> None:
    sampled = {**FAST_LGBM, "subsample": 0.6, "subsample_freq": 1, "colsample_bytree": 0.6}
    first, x, _ = _fit("lightgbm", sampled, seed=3)
    again, _, _ = _fit("lightgbm", sampled, seed=3)
    other, _, _ = _fit("lightgbm", sampled, seed=4)

    p_first = first.predict_proba(x)[:, 1]
    np.testing.assert_array_equal(p_first, again.predict_proba(x)[:, 1])
    # the seed reaches the model: with row/column sampling another seed gives another model
    assert not np.array_equal(p_first, other.predict_proba(x)[:, 1])


def test_logistic_family_is_seeded() -> None:
    first, x, _ = _fit("sklearn_logistic", {"C": 0.5}, seed=1)
    again, _, _ = _fit("sklearn_logistic", {"C": 0.5}, seed=1)
    np.testing.assert_array_equal(first.predict_proba(x), again.predict_proba(x))


def test_lightgbm_maps_an_unseen_category_to_the_unknown_code() -> None:
    model, x, _ = _fit("lightgbm", FAST_LGBM, seed=0)
    unseen = x.iloc[:20].copy()
    unseen["country"] = "FR"
    unseen.loc[unseen.index[:5], "device"] = "tv"

    encoded = model.named_steps["pre"].transform(unseen)
    strings = [i.name for i in INPUTS if i.dtype == "string"]  # encoded first, in input order
    assert strings == ["country", "device", "category"]
    assert (encoded[:, 0] == -1).all()
    assert (encoded[:5, 1] == -1).all()
    assert (encoded[5:, 1] >= 0).all()
    proba = model.predict_proba(unseen)[:, 1]
    assert np.isfinite(proba).all()
    assert ((proba > 0) & (proba < 1)).all()

    # declared categories fix the codes (declared order, not sorted or learnt from the data)
    known = x.iloc[:1].copy()
    for code, country in enumerate(next(i for i in INPUTS if i.name == "country").categories or []):
        known["country"] = country
        assert model.named_steps["pre"].transform(known)[0, 0] == code


def test_lightgbm_learns_categories_when_none_are_declared() -> None:
    inputs = [
        ModelInput(name="color", dtype="string"),
        ModelInput(name="size", dtype="float32"),
    ]
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"color": rng.choice(["red", "blue"], 400), "size": rng.random(400).astype(np.float32)})
    y = (x["color"] == "red").astype(int).to_numpy()
    model = get_family("lightgbm").build(inputs, FAST_LGBM, 0, 1).fit(x, y)
    encoder = model.named_steps["pre"].named_transformers_["strings"]
    assert [list(c) for c in encoder.categories_] == [["blue", "red"]]
    probe = pd.DataFrame({"color": ["red", "blue", "green"], "size": np.full(3, 0.5, dtype=np.float32)})
    proba = model.predict_proba(probe)[:, 1]
    assert proba[0] > 0.9 > 0.1 > proba[1]
    assert np.isfinite(proba[2])


# --- tune_space ----------------------------------------------------------------------------------


def test_tune_space_converts_the_samplers() -> None:
    from ray.tune.search import sample

    domains = tune_space(
        {
            "learning_rate": {"loguniform": [0.03, 0.1]},
            "num_leaves": {"choice": [7, 15]},
            "feature_fraction": {"uniform": [0.5, 0.9]},
            "max_bin": {"randint": [16, 64]},
        }
    )

    lr = domains["learning_rate"]
    assert isinstance(lr, sample.Float)
    assert isinstance(lr.get_sampler(), sample.LogUniform)
    assert (lr.lower, lr.upper) == (0.03, 0.1)
    leaves = domains["num_leaves"]
    assert isinstance(leaves, sample.Categorical)
    assert leaves.categories == [7, 15]
    fraction = domains["feature_fraction"]
    assert isinstance(fraction.get_sampler(), sample.Uniform)
    assert (fraction.lower, fraction.upper) == (0.5, 0.9)
    assert isinstance(domains["max_bin"], sample.Integer)

    rng = np.random.default_rng(0)
    draws = lr.sample(size=200, random_state=rng)
    assert all(0.03 <= v <= 0.1 for v in draws)
    assert set(leaves.sample(size=50, random_state=rng)) == {7, 15}


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"normal": [0, 1]}, "must be one of"),
        ([0.01, 0.1], "must be one of"),
        ({"loguniform": [0.01, 0.1], "choice": [1]}, "must be one of"),
        ({"loguniform": [0.01]}, "wrong arguments"),
        ({"uniform": 0.5}, "wrong arguments"),
        ({"choice": "abc"}, "wrong arguments"),
    ],
)
def test_tune_space_rejects_a_malformed_entry(entry: Any, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        tune_space({"num_leaves": {"choice": [7]}, "learning_rate": entry})
    assert "model.search_space.learning_rate" in str(info.value)
    assert fragment in str(info.value)


# --- runtime helpers (no Ray started) ------------------------------------------------------------


def test_temp_dir_too_long_for_ray_sockets_is_a_config_error() -> None:
    long = "/tmp/" + "x" * 120
    with pytest.raises(ConfigError, match=r"ray\.temp_dir") as info:
        _temp_dir(RayParams(temp_dir=long), None)
    assert str(_MAX_TEMP_DIR) in str(info.value)
    assert not Path(long).exists()


def test_relative_temp_dir_resolves_against_root(tmp_path: Path) -> None:
    root = tmp_path / ("r" * 60)
    with pytest.raises(ConfigError, match=r"ray\.temp_dir resolves to .*rrrr/ray"):
        _temp_dir(RayParams(temp_dir="ray"), root)
    assert not (root / "ray").exists()


def test_cluster_address_prefers_params_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(RayParams()) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(RayParams()) == "10.0.0.1:6379"
    assert cluster_address(RayParams(address="auto")) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert cluster_address(RayParams()) is None
