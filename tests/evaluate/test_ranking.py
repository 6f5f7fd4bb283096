"""Full-ranking metrics: hand-computed ranks, ties, exclusions, NaN, top-k order."""

import math

import numpy as np
import pytest

from increc_ray.evaluate.ranking import RankingReport, evaluate_ranks, hit_at_k, ndcg_at_k, rank_of


def test_rank_of_target_on_top_is_zero():
    assert rank_of(np.array([0.1, 0.9, 0.5]), target=1) == 0


def test_rank_of_counts_strictly_better_items():
    scores = np.array([0.3, 0.9, 0.1, 0.7, 0.5])
    assert rank_of(scores, target=4) == 2  # 0.9 and 0.7 ahead
    assert rank_of(scores, target=2) == 4  # last of five


def test_ties_count_against_the_target():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    # Both other 0.5s are ranked ahead, whatever the target's index.
    assert rank_of(scores, target=0) == 2
    assert rank_of(scores, target=2) == 2


def test_constant_scorer_gets_no_credit():
    scores = np.zeros(50)
    ranks = [rank_of(scores, target=t) for t in range(50)]
    assert ranks == [49] * 50
    assert evaluate_ranks(ranks, k=10).hr == 0.0


def test_excluded_items_are_removed_from_the_ranking():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert rank_of(scores, target=3) == 3
    assert rank_of(scores, target=3, exclude=[0, 2]) == 1
    assert rank_of(scores, target=3, exclude={0, 1, 2}) == 0


def test_target_is_never_excluded_even_if_listed():
    scores = np.array([0.9, 0.8, 0.7])
    assert rank_of(scores, target=1, exclude=[0, 1]) == 0


def test_nan_and_minus_inf_rank_below_everything():
    scores = np.array([np.nan, -np.inf, -5.0, 1.0])
    assert rank_of(scores, target=2) == 1  # only 1.0 is ahead; NaN is not
    # A NaN target is tied with -inf and the other NaN -> behind all three others.
    assert rank_of(scores, target=0) == 3
    assert rank_of(scores, target=1) == 3


def test_rank_of_does_not_modify_scores():
    scores = np.array([np.nan, 1.0])
    rank_of(scores, target=1)
    assert np.isnan(scores[0])


@pytest.mark.parametrize("target, exclude", [(3, ()), (-1, ()), (0, [5]), (0, [-1])])
def test_rank_of_rejects_out_of_range_indices(target, exclude):
    with pytest.raises(ValueError):
        rank_of(np.zeros(3), target=target, exclude=exclude)


def test_hit_and_ndcg_at_k():
    assert hit_at_k(0, 10) == 1.0
    assert hit_at_k(9, 10) == 1.0
    assert hit_at_k(10, 10) == 0.0
    assert ndcg_at_k(0, 10) == 1.0
    assert ndcg_at_k(1, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(6, 10) == pytest.approx(1 / 3)  # log2(8) = 3
    assert ndcg_at_k(10, 10) == 0.0


def test_evaluate_ranks_averages():
    report = evaluate_ranks([0, 2, 6, 10, 100], k=10)
    assert report == RankingReport(hr=pytest.approx(3 / 5), ndcg=pytest.approx((1 + 0.5 + 1 / 3) / 5), n=5)


def test_evaluate_ranks_accepts_a_generator():
    assert evaluate_ranks((r for r in [0, 0]), k=1) == RankingReport(hr=1.0, ndcg=1.0, n=2)


def test_evaluate_ranks_empty_is_nan_not_zero():
    report = evaluate_ranks([], k=10)
    assert report.n == 0 and math.isnan(report.hr) and math.isnan(report.ndcg)


def test_evaluate_ranks_rejects_bad_input():
    with pytest.raises(ValueError):
        evaluate_ranks([0], k=0)
    with pytest.raises(ValueError):
        evaluate_ranks([-1], k=10)
