"""Expectation suites derived from the real spec (plain data, no Great Expectations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsd.spec import ProblemSpec, load_spec
from mlsd.validation.suite import DTYPE_CHECK, REFERENCE_CHECK, Check, table_suite, training_set_suite

SPEC_PATH = Path(__file__).resolve().parents[1] / "conf" / "base" / "problem.yml"
CLICK_RATE = Check(
    "expect_column_mean_to_be_between", {"column": "clicked", "min_value": 0.005, "max_value": 0.05}
)


@pytest.fixture(scope="module")
def spec() -> ProblemSpec:
    return load_spec(SPEC_PATH)


@pytest.fixture(scope="module")
def training(spec: ProblemSpec) -> list[Check]:
    return training_set_suite(spec, n_events=12_345)


def test_impressions_suite_column_checks(spec: ProblemSpec) -> None:
    suite = table_suite(spec, "impressions")

    assert suite[0] == Check("expect_table_row_count_to_be_between", {"min_value": 1000, "max_value": None})
    assert Check("expect_column_values_to_be_unique", {"column": "imp_id"}) in suite
    assert Check(DTYPE_CHECK, {"column": "ts", "dtype": "timestamp"}) in suite
    assert (
        Check("expect_column_values_to_be_between", {"column": "position", "min_value": 1, "max_value": 10})
        in suite
    )
    assert Check(REFERENCE_CHECK, {"column": "user_id", "references": "users.user_id"}) in suite
    assert Check(REFERENCE_CHECK, {"column": "ad_id", "references": "ads.ad_id"}) in suite
    assert CLICK_RATE not in suite


def test_impressions_suite_checks_each_column_in_spec_order(spec: ProblemSpec) -> None:
    suite = table_suite(spec, "impressions")
    exist = [c.column for c in suite if c.type == "expect_column_to_exist"]

    assert exist == ["imp_id", "user_id", "ad_id", "ts", "position", "hour", "true_p"]
    assert [c.type for c in suite if c.column == "imp_id"] == [
        "expect_column_to_exist",
        DTYPE_CHECK,
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
    ]


def test_users_suite_allowed_values_and_default_min_rows(spec: ProblemSpec) -> None:
    suite = table_suite(spec, "users")

    assert suite[0].kwargs == {"min_value": 1, "max_value": None}
    assert (
        Check(
            "expect_column_values_to_be_in_set",
            {"column": "device", "value_set": ["ios", "android", "desktop"]},
        )
        in suite
    )


def test_events_suite_has_the_extra_expectation_and_a_nullable_click_ts(spec: ProblemSpec) -> None:
    suite = table_suite(spec, "events")

    assert suite[-1] == CLICK_RATE
    assert suite.count(CLICK_RATE) == 1
    assert Check("expect_column_values_to_not_be_null", {"column": "clicked"}) in suite
    assert Check("expect_column_values_to_not_be_null", {"column": "click_ts"}) not in suite
    assert Check("expect_column_values_to_be_in_set", {"column": "clicked", "value_set": [0, 1]}) in suite


def test_clicks_suite_allows_zero_rows(spec: ProblemSpec) -> None:
    suite = table_suite(spec, "clicks")

    assert suite[0].kwargs == {"min_value": 0, "max_value": None}
    assert Check(REFERENCE_CHECK, {"column": "imp_id", "references": "impressions.imp_id"}) in suite


def test_training_set_row_count_and_extra_expectation(training: list[Check]) -> None:
    assert training[0] == Check("expect_table_row_count_to_equal", {"value": 12_345})
    assert training[-1] == CLICK_RATE


def test_training_set_requires_every_feature(spec: ProblemSpec, training: list[Check]) -> None:
    not_null = {c.column for c in training if c.type == "expect_column_values_to_not_be_null"}

    assert len(spec.feature_fields()) == 15
    assert set(spec.feature_fields()) <= not_null
    keys_context_label = {"user_id", "ad_id", "category", "position", "hour", "clicked", "true_p"}
    assert not_null == {*spec.feature_fields(), *keys_context_label}


def test_training_set_truth_only_has_its_own_constraints(training: list[Check]) -> None:
    assert [c for c in training if c.column == "true_p"] == [
        Check("expect_column_to_exist", {"column": "true_p"}),
        Check(DTYPE_CHECK, {"column": "true_p", "dtype": "float64"}),
        Check("expect_column_values_to_not_be_null", {"column": "true_p"}),
        Check("expect_column_values_to_be_between", {"column": "true_p", "min_value": 0, "max_value": 1}),
    ]


def test_training_set_has_no_check_on_columns_it_drops(training: list[Check]) -> None:
    checked = {c.column for c in training} - {None}

    assert "click_ts" not in checked
    assert not {"imp_id", "ts", "click_delay_s"} & checked
    assert not any("click_ts" in repr(c.kwargs) for c in training)
    assert REFERENCE_CHECK not in {c.type for c in training}


def test_training_set_checks_no_column_twice(training: list[Check]) -> None:
    keys = [(c.type, c.column) for c in training if c.column is not None]

    assert len(keys) == len(set(keys))
