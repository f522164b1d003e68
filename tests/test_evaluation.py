"""Evaluation: metric values against references, gate arithmetic, and the report on known truth."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from mlsd.errors import GateError, SpecError
from mlsd.evaluation import (
    METRICS,
    GateResult,
    calibration_bins,
    check_gates,
    check_metric_names,
    compute_metrics,
    evaluate,
    evaluation_report,
    failures,
    oracle_gap,
    plot_curves,
    render_markdown,
)
from mlsd.spec.schema import GateSpec, MetricSpec

PNG = b"\x89PNG\r\n\x1a\n"


def _metric(name: str, higher: bool, **gate: Any) -> MetricSpec:
    return MetricSpec(name=name, higher_is_better=higher, gate=GateSpec(**gate) if gate else None)


def _spec_metrics(max_gap: float = 0.05) -> list[MetricSpec]:
    """The shipped problem's metric list, with an AUC gate."""
    return [
        _metric("auc", True, max_gap_to_oracle=max_gap, must_beat_baseline=True),
        _metric("log_loss", False),
        _metric("normalized_entropy", False),
        _metric("calibration_error", False),
        _metric("pr_auc", True),
    ]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def clicks() -> dict[str, np.ndarray]:
    """20k impressions with known click probabilities (~4.5% CTR), labels drawn from them."""
    rng = np.random.default_rng(7)
    logit = rng.normal(-3.5, 1.0, 20_000)
    truth = _sigmoid(logit)
    return {
        "y": (rng.random(truth.size) < truth).astype(np.int64),
        "oracle": truth,
        "model": _sigmoid(logit + rng.normal(0.0, 0.5, truth.size)),  # the truth seen through noise
        "baseline": np.full(truth.size, truth.mean()),  # the base rate for everyone
        "shuffled": rng.permutation(truth),  # right distribution, no information
    }


# --- metrics -------------------------------------------------------------------------------------


def test_auc_is_one_for_perfect_scores_and_zero_for_reversed() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert METRICS["auc"](y, s) == 1.0
    assert METRICS["auc"](y, 1 - s) == 0.0


def test_metrics_match_sklearn_references(clicks: dict[str, np.ndarray]) -> None:
    y, s = clicks["y"], clicks["model"]
    assert METRICS["auc"](y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert METRICS["pr_auc"](y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert METRICS["log_loss"](y, s) == pytest.approx(sk_log_loss(y, s), rel=1e-9)


def test_log_loss_by_hand_and_clipped_at_certain_misses() -> None:
    y = np.array([1, 0])
    assert METRICS["log_loss"](y, np.array([0.8, 0.4])) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # A certain miss costs -log(1e-15), not infinity, on either side.
    assert METRICS["log_loss"](y, np.array([0.0, 1.0])) == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_normalized_entropy_is_one_for_the_base_rate_predictor(clicks: dict[str, np.ndarray]) -> None:
    y = clicks["y"]
    assert METRICS["normalized_entropy"](y, np.full(y.size, y.mean())) == pytest.approx(1.0, abs=1e-12)
    # The truth is better than the base rate, so NE < 1; equal to log loss over base-rate entropy.
    p = y.mean()
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    ne = METRICS["normalized_entropy"](y, clicks["oracle"])
    assert ne == pytest.approx(METRICS["log_loss"](y, clicks["oracle"]) / entropy)
    assert ne < 0.95


def test_calibration_error_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.9])
    # Two bins of two rows: |0.15 - 0| and |0.75 - 1|, each weighted 1/2.
    assert METRICS["calibration_error"](y, s, bins=2) == pytest.approx(0.5 * 0.15 + 0.5 * 0.25)
    # Tied scores share a bin, and bins are weighted by their rows: 3/4 * |0.2 - 0| + 1/4 * |0.6 - 1|.
    tied = np.array([0.2, 0.2, 0.2, 0.6])
    assert METRICS["calibration_error"](np.array([0, 0, 0, 1]), tied, bins=2) == pytest.approx(0.25)


def test_calibration_error_small_for_true_probabilities_large_when_tripled(
    clicks: dict[str, np.ndarray],
) -> None:
    y, truth = clicks["y"], clicks["oracle"]
    calibrated = METRICS["calibration_error"](y, truth)
    tripled = METRICS["calibration_error"](y, np.clip(truth * 3, 0, 1))
    assert calibrated < 0.01
    assert tripled > 0.05
    assert tripled > 5 * calibrated


def test_calibration_bins_are_equal_frequency_and_keep_ties_together() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    _, _, count = calibration_bins(y, rng.random(1000) ** 4, bins=20)  # scores piled up near 0
    assert count.tolist() == [50] * 20
    _, observed, count = calibration_bins(y, np.full(1000, 0.3), bins=20)
    assert count.tolist() == [1000]
    assert observed[0] == pytest.approx(y.mean())
    assert METRICS["calibration_error"](y, np.full(1000, y.mean())) == pytest.approx(0.0, abs=1e-12)


def test_one_class_raises_naming_rows_and_class() -> None:
    with pytest.raises(ValueError, match=r"5 rows, all of class 0") as err:
        METRICS["auc"](np.zeros(5, dtype=int), np.linspace(0.1, 0.5, 5))
    assert "AUC" in str(err.value)
    with pytest.raises(ValueError, match=r"3 rows, all of class 1"):
        compute_metrics(_spec_metrics(), np.ones(3, dtype=int), np.full(3, 0.5))


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        (np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]), "only 0 and 1"),
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3]), "2 rows but y_score has 3"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "NaN"),
        (np.array([0, 1]), np.array([-2.0, 3.0]), "probabilities"),
    ],
)
def test_bad_inputs_are_refused(y: np.ndarray, s: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        METRICS["log_loss"](y, s)


def test_compute_metrics_in_spec_order_with_params(clicks: dict[str, np.ndarray]) -> None:
    metrics = [
        MetricSpec(name="calibration_error", higher_is_better=False, params={"bins": 2}),
        _metric("auc", True),
    ]
    values = compute_metrics(metrics, clicks["y"], clicks["model"])
    assert list(values) == ["calibration_error", "auc"]
    assert values["calibration_error"] == METRICS["calibration_error"](clicks["y"], clicks["model"], bins=2)
    assert all(isinstance(v, float) for v in values.values())


def test_unknown_metric_name_is_a_spec_error_naming_it_and_the_known_ones() -> None:
    metrics = [_metric("auc", True), _metric("accuracy", True)]
    with pytest.raises(SpecError, match="'accuracy'") as err:
        check_metric_names(metrics)
    assert all(name in str(err.value) for name in METRICS)
    with pytest.raises(SpecError, match="'accuracy'"):
        compute_metrics(metrics, np.array([0, 1]), np.array([0.2, 0.7]))
    check_metric_names(_spec_metrics())  # the shipped names are all known


def test_params_that_do_not_fit_the_metric_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"metrics\.auc\.params"):
        check_metric_names([MetricSpec(name="auc", higher_is_better=True, params={"bins": 10})])


# --- gates ---------------------------------------------------------------------------------------


def test_oracle_gap_is_positive_when_the_model_is_worse_in_either_direction() -> None:
    assert oracle_gap(_metric("auc", True), model=0.75, oracle=0.80) == pytest.approx(0.05)
    assert oracle_gap(_metric("log_loss", False), model=0.20, oracle=0.15) == pytest.approx(0.05)
    assert oracle_gap(_metric("log_loss", False), model=0.10, oracle=0.15) == pytest.approx(-0.05)


@pytest.mark.parametrize(
    ("higher", "model", "oracle", "passed"),
    [
        (True, 0.78, 0.80, True),  # gap exactly the max passes despite float rounding
        (True, 0.7799, 0.80, False),
        (True, 0.85, 0.80, True),  # better than the oracle (noise) passes
        (False, 0.17, 0.15, True),  # lower is better: gap exactly the max
        (False, 0.1701, 0.15, False),
        (False, 0.14, 0.15, True),
    ],
)
def test_max_gap_to_oracle(higher: bool, model: float, oracle: float, passed: bool) -> None:
    metric = _metric("m", higher, max_gap_to_oracle=0.02)
    (result,) = check_gates([metric], model={"m": model}, baseline={}, oracle={"m": oracle})
    assert result.check == "max_gap_to_oracle"
    assert result.passed is passed
    assert ("<=" if passed else ">") in result.detail
    assert "max 0.0200" in result.detail


def test_max_gap_detail_has_the_numbers() -> None:
    metric = _metric("auc", True, max_gap_to_oracle=0.02)
    (result,) = check_gates([metric], model={"auc": 0.7710}, baseline={}, oracle={"auc": 0.8012})
    assert result == GateResult(
        "auc", "max_gap_to_oracle", False, "auc 0.7710 vs oracle 0.8012: gap 0.0302 > max 0.0200"
    )


@pytest.mark.parametrize(
    ("higher", "model", "baseline", "passed"),
    [
        (True, 0.76, 0.75, True),
        (True, 0.75, 0.75, False),  # a tie is not beating it
        (True, 0.74, 0.75, False),
        (False, 0.14, 0.15, True),
        (False, 0.15, 0.15, False),
        (False, 0.16, 0.15, False),
    ],
)
def test_must_beat_baseline_is_strict(higher: bool, model: float, baseline: float, passed: bool) -> None:
    metric = _metric("m", higher, must_beat_baseline=True)
    (result,) = check_gates([metric], model={"m": model}, baseline={"m": baseline}, oracle={})
    assert (result.check, result.passed) == ("must_beat_baseline", passed)


def test_one_result_per_configured_check_and_failures_lines() -> None:
    metrics = [
        _metric("auc", True, max_gap_to_oracle=0.02, must_beat_baseline=True),
        _metric("log_loss", False),  # no gate: no result
        _metric("calibration_error", False, max_gap_to_oracle=0.01),
    ]
    results = check_gates(
        metrics,
        model={"auc": 0.70, "log_loss": 0.2, "calibration_error": 0.005},
        baseline={"auc": 0.72, "log_loss": 0.3, "calibration_error": 0.01},
        oracle={"auc": 0.80, "log_loss": 0.1, "calibration_error": 0.004},
    )
    assert [(r.metric, r.check, r.passed) for r in results] == [
        ("auc", "max_gap_to_oracle", False),
        ("auc", "must_beat_baseline", False),
        ("calibration_error", "max_gap_to_oracle", True),
    ]
    lines = failures(results)
    assert lines == [
        "auc max_gap_to_oracle: auc 0.7000 vs oracle 0.8000: gap 0.1000 > max 0.0200",
        "auc must_beat_baseline: auc 0.7000 vs baseline 0.7200: not strictly better (higher is better)",
    ]
    assert "2 gate(s) failed" in str(GateError(lines))


def test_nan_metric_fails_its_gates() -> None:
    metric = _metric("auc", True, max_gap_to_oracle=0.02, must_beat_baseline=True)
    results = check_gates([metric], model={"auc": math.nan}, baseline={"auc": 0.5}, oracle={"auc": 0.8})
    assert [r.passed for r in results] == [False, False]


def test_missing_gated_value_names_the_scorer_and_metric() -> None:
    metric = _metric("auc", True, max_gap_to_oracle=0.02)
    with pytest.raises(ValueError, match=r"no oracle value for metric 'auc'"):
        check_gates([metric], model={"auc": 0.7}, baseline={}, oracle={})


# --- report --------------------------------------------------------------------------------------


def test_oracle_beats_a_noisy_model_which_beats_the_base_rate(clicks: dict[str, np.ndarray]) -> None:
    values = evaluate(_spec_metrics(), clicks["y"], {k: v for k, v in clicks.items() if k != "y"})
    oracle, model, baseline = values["oracle"], values["model"], values["baseline"]
    for name in ("log_loss", "normalized_entropy"):
        assert oracle[name] < model[name] < baseline[name]
    assert oracle["auc"] > model["auc"] > baseline["auc"] == 0.5
    assert oracle["pr_auc"] > model["pr_auc"]
    assert values["shuffled"]["auc"] == pytest.approx(0.5, abs=0.03)


def _report(clicks: dict[str, np.ndarray], model: str, max_gap: float = 0.05) -> dict[str, Any]:
    scores = {"model": clicks[model], "baseline": clicks["baseline"], "oracle": clicks["oracle"]}
    return evaluation_report(_spec_metrics(max_gap), clicks["y"], scores, holdout={"days": "2024-01-13..14"})


def test_report_passes_a_good_model_and_is_json_ready(clicks: dict[str, np.ndarray]) -> None:
    report = _report(clicks, "model")
    assert json.loads(json.dumps(report)) == report
    holdout = report["holdout"]
    assert holdout["days"] == "2024-01-13..14"
    assert holdout["rows"] == clicks["y"].size
    assert holdout["positives"] == int(clicks["y"].sum())
    assert holdout["base_rate"] == pytest.approx(clicks["y"].mean())
    assert set(report["metrics"]) == {"model", "baseline", "oracle"}
    gap = report["oracle_gap"]["model"]["auc"]
    assert gap == pytest.approx(report["metrics"]["oracle"]["auc"] - report["metrics"]["model"]["auc"])
    assert 0 < gap < 0.05
    assert report["oracle_gap"]["baseline"]["log_loss"] > 0
    assert [(g["check"], g["passed"]) for g in report["gates"]] == [
        ("max_gap_to_oracle", True),
        ("must_beat_baseline", True),
    ]
    assert report["passed"] is True


def test_report_fails_a_shuffled_model_on_the_oracle_gap(clicks: dict[str, np.ndarray]) -> None:
    report = _report(clicks, "shuffled")
    assert report["passed"] is False
    gap_gate = report["gates"][0]
    assert gap_gate["check"] == "max_gap_to_oracle"
    assert gap_gate["passed"] is False
    assert report["oracle_gap"]["model"]["auc"] > 0.2


def test_a_tight_gate_fails_even_the_noisy_model(clicks: dict[str, np.ndarray]) -> None:
    report = _report(clicks, "model", max_gap=0.001)
    assert report["passed"] is False
    assert [g["passed"] for g in report["gates"]] == [False, True]


def test_report_requires_model_baseline_and_oracle(clicks: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"lacks \['oracle'\]"):
        evaluation_report(
            _spec_metrics(),
            clicks["y"],
            {"model": clicks["model"], "baseline": clicks["baseline"]},
            holdout={},
        )


def test_evaluate_names_the_scorer_with_bad_scores(clicks: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"scores\['model'\].*rows but y_score"):
        evaluate(_spec_metrics(), clicks["y"], {"model": clicks["model"][:10]})


def test_render_markdown_has_the_table_gates_and_images(clicks: dict[str, np.ndarray]) -> None:
    report = _report(clicks, "model", max_gap=0.001)
    page = render_markdown(report, figures={"roc": "roc.png", "calibration": "calibration.png"})
    values = report["metrics"]
    auc_row = (
        f"| auc | {values['model']['auc']:.4f} | {values['baseline']['auc']:.4f} | "
        f"{values['oracle']['auc']:.4f} | {report['oracle_gap']['model']['auc']:.4f} |"
    )
    assert auc_row in page
    assert "| metric | model | baseline | oracle | model gap to oracle |" in page
    for name in ("log_loss", "normalized_entropy", "calibration_error", "pr_auc"):
        assert f"\n| {name} | " in page
    assert "**FAIL** auc max_gap_to_oracle" in page
    assert "**PASS** auc must_beat_baseline" in page
    assert "FAILED (1 of 2 gates failed)" in page
    assert f"{clicks['y'].size:,} rows" in page
    assert "![ROC curve](roc.png)" in page
    assert "![Calibration curve](calibration.png)" in page


def test_render_markdown_without_gates_or_figures(clicks: dict[str, np.ndarray]) -> None:
    scores = {"model": clicks["model"], "baseline": clicks["baseline"], "oracle": clicks["oracle"]}
    report = evaluation_report([_metric("auc", True)], clicks["y"], scores, holdout={})
    page = render_markdown(report, figures={})
    assert report["passed"] is True
    assert "No gates configured." in page
    assert "![" not in page


def test_plot_curves_returns_pngs(clicks: dict[str, np.ndarray]) -> None:
    scores = {"model": clicks["model"], "baseline": clicks["baseline"], "oracle": clicks["oracle"]}
    figures = plot_curves(clicks["y"], scores, bins=10)
    assert set(figures) == {"roc", "calibration"}
    for png in figures.values():
        assert png.startswith(PNG)
        assert len(png) > 5_000


# --- every gate line, word for word --------------------------------------------------------------


@pytest.mark.parametrize(
    ("higher", "model", "baseline", "detail"),
    [
        (True, 0.7600, 0.7500, "m 0.7600 vs baseline 0.7500: better by 0.0100"),
        (False, 0.1400, 0.1500, "m 0.1400 vs baseline 0.1500: better by 0.0100"),
        (True, 0.7500, 0.7500, "m 0.7500 vs baseline 0.7500: not strictly better (higher is better)"),
        (False, 0.1500, 0.1500, "m 0.1500 vs baseline 0.1500: not strictly better (lower is better)"),
    ],
)
def test_the_baseline_detail_says_by_how_much_or_which_direction_is_better(
    higher: bool, model: float, baseline: float, detail: str
) -> None:
    metric = _metric("m", higher, must_beat_baseline=True)
    (result,) = check_gates([metric], model={"m": model}, baseline={"m": baseline}, oracle={})
    assert result.detail == detail


def test_a_passing_gap_detail_has_the_numbers() -> None:
    metric = _metric("log_loss", False, max_gap_to_oracle=0.02)
    (result,) = check_gates([metric], model={"log_loss": 0.17}, baseline={}, oracle={"log_loss": 0.16})
    assert result.detail == "log_loss 0.1700 vs oracle 0.1600: gap 0.0100 <= max 0.0200"


@pytest.mark.parametrize("scorer", ["model", "baseline", "oracle"])
def test_a_missing_value_names_its_scorer_the_metric_the_values_present_and_the_fix(scorer: str) -> None:
    metric = _metric("auc", True, max_gap_to_oracle=0.02, must_beat_baseline=True)
    values = {name: {"auc": 0.7, "ap": 0.1} for name in ("model", "baseline", "oracle")}
    values[scorer] = {"ap": 0.1, "log_loss": 0.2}
    with pytest.raises(ValueError, match=f"^no {scorer} value") as info:
        check_gates([metric], **values)
    assert str(info.value) == (
        f"no {scorer} value for metric 'auc' (have ['ap', 'log_loss']); compute every scorer's metrics "
        "with the same metric list"
    )
