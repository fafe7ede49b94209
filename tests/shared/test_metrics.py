"""Metrics against hand-computed values, including ties and absent targets."""
import math

import numpy as np
import pytest

from shared import metrics


def test_target_ranks_found_and_absent():
    ranked = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    assert metrics.target_ranks(ranked, np.array([9, 1, 42])).tolist() == [2, 0, -1]


def test_hand_computed_values():
    ranks = np.array([0, 2, -1, 10])  # hit at 1, hit at 3, absent, hit at 11
    assert metrics.hit_rate(ranks, 5) == pytest.approx(0.5)
    assert metrics.hit_rate(ranks, 20) == pytest.approx(0.75)
    assert metrics.ndcg(ranks, 5) == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert metrics.mrr(ranks, 5) == pytest.approx((1.0 + 1 / 3) / 4)
    assert metrics.mrr(ranks, 20) == pytest.approx((1.0 + 1 / 3 + 1 / 11) / 4)
    assert metrics.recall(ranks, 20) == metrics.hit_rate(ranks, 20)


def test_ties_count_against_the_target():
    scores = np.array([[0.0, 1.0, 1.0, 1.0, 0.5]])  # target 2 ties with items 1 and 3
    assert metrics.ranks_from_scores(scores, np.array([2])).tolist() == [2]
    constant = np.zeros((1, 5))
    assert metrics.ranks_from_scores(constant, np.array([3])).tolist() == [4]


def test_excluded_items_with_minus_inf_never_outrank():
    scores = np.array([[-np.inf, 0.2, -np.inf, 0.1]])
    assert metrics.ranks_from_scores(scores, np.array([3])).tolist() == [1]


def test_coverage_and_summary_keys():
    assert metrics.coverage([[1, 2, 3], [3, 4, 0]], num_items=8) == pytest.approx(4 / 8)
    assert metrics.coverage([[1, 2, 3], [3, 4]], num_items=8, k=1) == pytest.approx(2 / 8)
    summary = metrics.summarize(np.array([0, -1]), ks=(10,))
    assert summary == {"hr@10": 0.5, "ndcg@10": 0.5, "mrr@10": 0.5, "recall@10": 0.5}


def test_empty_and_mismatched_inputs():
    assert metrics.ndcg(np.array([], dtype=int), 10) == 0.0
    with pytest.raises(ValueError):
        metrics.target_ranks(np.zeros((2, 3)), np.array([1]))
