"""Behaviour of the problem spec: the real spec loads, invalid specs fail naming the field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsd.errors import SpecError
from mlsd.spec import load_spec, spec_from_mapping, spec_hash
from mlsd.spec.schema import parse_duration

SPEC_PATH = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture
def spec_dict() -> dict[str, Any]:
    """A fresh, mutable copy of the mapping under ``problem:`` in the real spec."""
    return yaml.safe_load(SPEC_PATH.read_text())["problem"]


def _set(path: tuple[str | int, ...], value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        node: Any = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: tuple[str | int, ...]) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        node: Any = d
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _error(spec_dict: dict[str, Any], mutate: Mutation) -> str:
    mutate(spec_dict)
    with pytest.raises(SpecError) as excinfo:
        spec_from_mapping(spec_dict)
    return str(excinfo.value)


# --- the real spec -------------------------------------------------------------------------------


def test_real_spec_model_inputs_are_features_then_context() -> None:
    spec = load_spec(SPEC_PATH)

    assert spec.name == "ad_click"
    assert spec.model_inputs() == [
        *("age", "country", "device"),
        *("user_imps_1d", "user_ctr_1d", "user_imps_7d", "user_ctr_7d"),
        *("ad_imps_1d", "ad_ctr_1d", "ad_imps_7d", "ad_ctr_7d"),
        *("uc_imps_1d", "uc_ctr_1d", "uc_imps_7d", "uc_ctr_7d"),
        *("category", "position", "hour"),
    ]
    assert spec.model_inputs()[-3:] == list(spec.serving.context)


def test_real_spec_ttls_are_parsed() -> None:
    spec = load_spec(SPEC_PATH)

    assert {fv.name: fv.ttl for fv in spec.feature_views} == {
        "user_profile": timedelta(0),
        "user_ctr": timedelta(days=1),
        "ad_ctr": timedelta(days=1),
        "user_category_ctr": timedelta(days=1),
    }


# --- invalid specs name the offending field -------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        pytest.param(
            _set(("tables", "users", "columns", "age", "maxx"), 3),
            ["tables.users.columns.age.maxx: Extra inputs are not permitted"],
            id="unknown-extra-key",
        ),
        pytest.param(
            _set(("tables", "users", "columns", "age", "min"), 200),
            ["tables.users.columns.age:", "min (200.0) is greater than max (100.0)"],
            id="min-greater-than-max",
        ),
        pytest.param(
            _set(("tables", "users", "columns", "country", "min"), 1),
            ["tables.users.columns.country:", "numeric dtype"],
            id="min-on-string-column",
        ),
        pytest.param(
            _set(("feature_views", 1, "entities"), ["user", "shop"]),
            ["feature_views.user_ctr.entities: unknown entity 'shop'"],
            id="view-unknown-entity",
        ),
        pytest.param(
            _set(("feature_views", 1, "fields", "true_p"), {"dtype": "float64"}),
            ["'true_p'", "is the label or the truth, never a model input"],
            id="truth-as-feature",
        ),
        pytest.param(
            _set(("feature_views", 0, "fields", "clicked"), {"dtype": "int64"}),
            ["'clicked'", "is the label or the truth, never a model input"],
            id="label-as-feature",
        ),
        pytest.param(
            _set(("feature_views", 2, "fields", "user_ctr_7d"), {"dtype": "float32"}),
            ["feature_views.ad_ctr.fields.user_ctr_7d: also defined in user_ctr"],
            id="duplicate-feature-name",
        ),
        pytest.param(
            _set(("tables", "impressions", "columns", "user_id", "references"), "users.nope"),
            ["tables.impressions.columns.user_id.references: 'users.nope' is not a column"],
            id="reference-to-missing-column",
        ),
        pytest.param(
            _set(("tables", "impressions", "columns", "user_id", "references"), "nope.user_id"),
            ["tables.impressions.columns.user_id.references: 'nope.user_id' is not a column"],
            id="reference-to-missing-table",
        ),
        pytest.param(
            _set(("drift", "columns"), ["age", "click_ts"]),
            ["drift.columns: 'click_ts' is not a model input"],
            id="drift-column-not-model-input",
        ),
        pytest.param(
            _set(("feature_views", 1, "ttl"), "ten days"),
            ["feature_views.1.ttl: Input should be a valid timedelta"],
            id="bad-ttl",
        ),
        pytest.param(
            _delete(("question",)),
            ["question: Field required"],
            id="missing-question",
        ),
        pytest.param(
            _set(("serving", "routing_key"), "imp_id"),
            ["serving.routing_key: 'imp_id' must be an entity key"],
            id="routing-key-not-entity-key",
        ),
        pytest.param(
            _set(("label", "truth"), "oracle_p"),
            ["label.truth: 'oracle_p' is not a column of events"],
            id="label-truth-not-in-events",
        ),
    ],
)
def test_invalid_spec_names_the_field(
    spec_dict: dict[str, Any], mutate: Mutation, fragments: list[str]
) -> None:
    message = _error(spec_dict, mutate)

    assert message.startswith("Invalid problem spec in parameters:")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("column", ["true_p", "clicked"])
def test_label_or_truth_as_request_context_is_rejected(spec_dict: dict[str, Any], column: str) -> None:
    spec_dict["serving"]["context"][column] = {"dtype": "float64", "min": 0, "max": 1}

    message = _error(spec_dict, lambda d: None)

    assert repr(column) in message
    assert "label or the truth" in message


def test_not_a_mapping_is_rejected() -> None:
    with pytest.raises(SpecError, match="expected a mapping, got list"):
        spec_from_mapping(["ad_click"])  # type: ignore[arg-type]


# --- load_spec file errors ------------------------------------------------------------------------


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"

    with pytest.raises(SpecError, match="does not exist") as excinfo:
        load_spec(path)
    assert str(path) in str(excinfo.value)


def test_load_spec_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "problem.yml"
    path.write_text("problem: [unclosed\n  name: x\n")

    with pytest.raises(SpecError, match="is not valid YAML") as excinfo:
        load_spec(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("text", ["name: ad_click\n", "- problem\n", ""], ids=["other-key", "list", "empty"])
def test_load_spec_without_problem_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "problem.yml"
    path.write_text(text)

    with pytest.raises(SpecError, match="must have a top-level 'problem:' key"):
        load_spec(path)


def test_load_spec_invalid_field_names_the_file(tmp_path: Path, spec_dict: dict[str, Any]) -> None:
    spec_dict["tables"]["users"]["columns"]["age"]["maxx"] = 3
    path = tmp_path / "problem.yml"
    path.write_text(yaml.safe_dump({"problem": spec_dict}))

    with pytest.raises(SpecError) as excinfo:
        load_spec(path)
    assert f"Invalid problem spec in {path}:" in str(excinfo.value)
    assert "tables.users.columns.age.maxx" in str(excinfo.value)


# --- spec_hash -------------------------------------------------------------------------------------


def test_spec_hash_is_stable(spec_dict: dict[str, Any]) -> None:
    first = spec_hash(load_spec(SPEC_PATH))

    assert len(first) == 16
    assert int(first, 16) >= 0
    assert spec_hash(load_spec(SPEC_PATH)) == first
    assert spec_hash(spec_from_mapping(copy.deepcopy(spec_dict))) == first


def test_spec_hash_changes_with_a_value(spec_dict: dict[str, Any]) -> None:
    before = spec_hash(spec_from_mapping(copy.deepcopy(spec_dict)))
    spec_dict["serving"]["latency_budget_ms"] = 151

    assert spec_hash(spec_from_mapping(spec_dict)) != before


def test_spec_hash_changes_with_feature_order(spec_dict: dict[str, Any]) -> None:
    before = spec_from_mapping(copy.deepcopy(spec_dict))
    fields = spec_dict["feature_views"][1]["fields"]
    spec_dict["feature_views"][1]["fields"] = dict(reversed(list(fields.items())))
    after = spec_from_mapping(spec_dict)

    assert after.model_inputs() != before.model_inputs()
    assert spec_hash(after) != spec_hash(before)


# --- parse_duration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(days=7)),
        ("45s", timedelta(seconds=45)),
        (" 6h ", timedelta(hours=6)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("value", ["P1D", "2 days", "3y", 60])
def test_parse_duration_leaves_other_values_to_pydantic(value: object) -> None:
    assert parse_duration(value) == value
