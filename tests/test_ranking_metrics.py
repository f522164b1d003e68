"""Grouped ranking metrics (NDCG@k, engagements@k per session): hand-computed values, a reference
implementation, and the spec errors that keep groups and metrics consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from mlsd.errors import SpecError
from mlsd.evaluation import METRICS, check_metric_names, compute_metrics, evaluation_report
from mlsd.spec.schema import GateSpec, MetricSpec

ndcg_at_k = METRICS["ndcg_at_k"]
engagements_at_k = METRICS["engagements_at_k"]


def _ndcg(k: int = 10, **gate: float) -> MetricSpec:
    return MetricSpec(
        name="ndcg_at_k", higher_is_better=True, params={"k": k}, gate=GateSpec(**gate) if gate else None
    )


AUC = MetricSpec(name="auc", higher_is_better=True)


def test_hand_computed_ndcg_of_one_session() -> None:
    # Ranked by score: labels 0, 1, 0, 1 -> DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
    y = np.array([1, 0, 1, 0])
    s = np.array([0.7, 0.9, 0.2, 0.5])
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(y, s, np.zeros(4), k=10) == pytest.approx(expected)
    # k=2 sees the top two slots only: DCG = 1/log2(3); ideal = 1 + 1/log2(3).
    assert ndcg_at_k(y, s, np.zeros(4), k=2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_perfect_ranking_is_one_and_reversed_is_lower() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    groups = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    assert ndcg_at_k(y, y + 0.1, groups) == pytest.approx(1.0)
    assert ndcg_at_k(y, 1.0 - y, groups) < 0.7


def test_groups_are_ranked_separately_and_averaged() -> None:
    # Group a: positive ranked 2nd of 2 -> 1/log2(3); group b: positive first -> 1. Mean of both.
    y = np.array([1, 0, 1, 0])
    s = np.array([0.1, 0.9, 0.5, 0.2])  # a global ranking would put b's positive below a's negative
    groups = np.array(["a", "a", "b", "b"])
    assert ndcg_at_k(y, s, groups) == pytest.approx((1 / math.log2(3) + 1.0) / 2)


def test_groups_without_positives_are_left_out_of_the_mean() -> None:
    # Group 1's positive is ranked second (NDCG 1/log2(3)); group 2 has none. Counting group 2 as
    # 0 or 1 would give half or (1 + that) / 2.
    y = np.array([1, 0, 0, 0, 0])
    s = np.array([0.1, 0.9, 0.8, 0.5, 0.3])
    groups = np.array([1, 1, 2, 2, 2])
    assert ndcg_at_k(y, s, groups) == pytest.approx(1 / math.log2(3))
    # ...while engagements@k counts them, as sessions with no engagement.
    assert engagements_at_k(y, s, groups, k=2) == pytest.approx(0.5)


def test_ties_share_their_slots() -> None:
    # A constant scorer gets the expected NDCG over the tie's orders, not the file order's.
    y = np.array([0, 1])
    expected = (0.5 * 1 + 0.5 / math.log2(3)) / 1.0
    assert ndcg_at_k(y, np.array([0.5, 0.5]), np.zeros(2)) == pytest.approx(expected)
    assert ndcg_at_k(y[::-1], np.array([0.5, 0.5]), np.zeros(2)) == pytest.approx(expected)
    assert engagements_at_k(y, np.array([0.5, 0.5]), np.zeros(2), k=1) == pytest.approx(0.5)


def test_matches_sklearn_per_group_mean() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    groups = rng.integers(0, 150, n)
    y = (rng.random(n) < 0.12).astype(np.int64)
    s = np.round(rng.random(n), 1)  # coarse scores: many ties
    for k in (1, 5, 10):
        reference = [
            ndcg_score(y[groups == g][None], s[groups == g][None], k=k)
            for g in np.unique(groups)
            if y[groups == g].sum() > 0
        ]
        assert ndcg_at_k(y, s, groups, k=k) == pytest.approx(np.mean(reference), abs=1e-12)


def test_engagements_at_k_counts_positives_in_each_top_k() -> None:
    y = np.array([1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.8, 0.7, 0.6, 0.5])
    groups = np.array([1, 1, 1, 1, 2, 2])
    # k=2: group 1's top two hold one positive, group 2's one -> mean 1.0; k=4: 2 and 1 -> 1.5.
    assert engagements_at_k(y, s, groups, k=2) == pytest.approx(1.0)
    assert engagements_at_k(y, s, groups, k=4) == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("groups", "k", "message"),
    [
        (np.zeros(3), 10, "groups has shape"),
        (np.array([1.0, np.nan, 2.0, 2.0]), 10, "missing values"),
        (np.zeros(4), 0, "k must be a positive integer"),
    ],
)
def test_bad_groups_or_k_are_refused(groups: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ndcg_at_k(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]), groups, k=k)


def test_a_grouped_metric_without_label_group_is_a_spec_error_naming_both() -> None:
    with pytest.raises(SpecError, match=r"metrics\.ndcg_at_k.*label\.group"):
        check_metric_names([AUC, _ndcg()])
    check_metric_names([AUC, _ndcg()], group="session_id")
    with pytest.raises(SpecError, match=r"metrics\.ndcg_at_k.*label\.group"):
        compute_metrics([AUC, _ndcg()], np.array([0, 1]), np.array([0.2, 0.7]))


def test_the_tuning_target_must_be_pointwise() -> None:
    with pytest.raises(SpecError, match=r"tuning target.*'ndcg_at_k'"):
        check_metric_names([_ndcg(), AUC], group="session_id")


def test_grouped_metric_params_are_checked_like_any_other() -> None:
    bad = MetricSpec(name="ndcg_at_k", higher_is_better=True, params={"bins": 3})
    with pytest.raises(SpecError, match=r"metrics\.ndcg_at_k\.params.*accepts \['k'\]"):
        check_metric_names([AUC, bad], group="session_id")


def test_report_gates_ndcg_against_the_oracle_per_group() -> None:
    rng = np.random.default_rng(5)
    n, truth = 20_000, rng.beta(1, 9, 20_000)
    y = (rng.random(n) < truth).astype(np.int64)
    groups = np.arange(n) // 20
    scores = {"model": truth + rng.normal(0, 0.05, n), "baseline": rng.random(n), "oracle": truth}
    scores["model"] = np.clip(scores["model"], 0, 1)
    metrics = [AUC, _ndcg(max_gap_to_oracle=0.05, must_beat_baseline=True)]
    report = evaluation_report(metrics, y, scores, holdout={}, groups=groups)
    values = report["metrics"]
    assert values["oracle"]["ndcg_at_k"] > values["model"]["ndcg_at_k"] > values["baseline"]["ndcg_at_k"]
    assert report["passed"], report["gates"]
    shuffled = {**scores, "model": rng.permutation(truth)}
    assert not evaluation_report(metrics, y, shuffled, holdout={}, groups=groups)["passed"]


mrr = METRICS["mrr"]
hit_at_k = METRICS["hit_at_k"]


def test_hand_computed_mrr_and_hit_at_k() -> None:
    # Group 0: first positive at rank 2; group 1: at rank 1; group 2 has no positive and is left out.
    y = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.1, 0.7, 0.6, 0.5, 0.4, 0.3])
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert mrr(y, s, groups) == pytest.approx((1 / 2 + 1) / 2)
    assert hit_at_k(y, s, groups, k=1) == pytest.approx(0.5)
    assert hit_at_k(y, s, groups, k=2) == pytest.approx(1.0)
    # A second positive below the first changes nothing: only the first one counts.
    y2 = y.copy()
    y2[2] = 1
    assert mrr(y2, s, groups) == pytest.approx(mrr(y, s, groups))


def _brute_force_tied(y: np.ndarray, s: np.ndarray, k: int) -> tuple[float, float]:
    """Expected RR and hit@k of one group over every order of its tied rows (exhaustive)."""
    import itertools

    rr, hits, count = 0.0, 0.0, 0
    for noise in itertools.permutations(range(len(y))):
        order = np.lexsort((np.array(noise), -s))
        rank = int(np.flatnonzero(y[order] == 1)[0]) + 1
        rr, hits, count = rr + 1 / rank, hits + (rank <= k), count + 1
    return rr / count, hits / count


@pytest.mark.parametrize(
    ("y", "s"),
    [
        ([0, 1, 0, 0, 0], [0.5] * 5),  # a constant scorer: the rank of a random order
        ([1, 1, 0, 0, 0, 0], [0.5] * 6),
        ([0, 1, 0, 1, 0, 0], [0.9, 0.5, 0.5, 0.5, 0.5, 0.1]),  # a negative above a tie of 2 pos + 2 neg
        ([0, 0, 1, 0, 1, 0], [0.3, 0.3, 0.3, 0.8, 0.1, 0.3]),
    ],
)
def test_tied_scores_count_at_their_expected_rank(y: list[int], s: list[float]) -> None:
    labels, scores = np.array(y), np.array(s)
    groups = np.zeros(len(y))
    expected_rr, expected_hit = _brute_force_tied(labels, scores, k=2)
    assert mrr(labels, scores, groups) == pytest.approx(expected_rr)
    assert hit_at_k(labels, scores, groups, k=2) == pytest.approx(expected_hit)


def test_mrr_needs_groups_and_hit_at_k_a_positive_k() -> None:
    with pytest.raises(SpecError, match=r"label\.group is not set"):
        check_metric_names([AUC, MetricSpec(name="mrr", higher_is_better=True)], None)
    y, s = np.array([0, 1]), np.array([0.2, 0.4])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        hit_at_k(y, s, np.zeros(2), k=0)
    with pytest.raises(ValueError, match="missing values"):
        mrr(y, s, np.array([1.0, np.nan]))
