"""Per-user NDCG and the paired bootstrap that the report's bars quote."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.figures import by_popularity, paired_difference, per_user_ndcg


def test_per_user_ndcg_averages_each_users_steps_in_id_order():
    users = np.array([7, 3, 7, 3, 7, 3])
    ranks = np.array([0, -1, 1, 12, -1, 0])  # user 7: 1, 1/log2(3), 0; user 3: miss, beyond K, 1
    got = per_user_ndcg(users, ranks, k=10)
    assert got == pytest.approx([1 / 3, (1 + 1 / np.log2(3)) / 3], abs=1e-6)
    assert per_user_ndcg(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == []


def test_paired_difference_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.3, 500)
    out = paired_difference(base + 0.01, base)
    assert out["diff"] == pytest.approx(0.01)
    assert out["ci95"] == pytest.approx([0.01, 0.01])  # no spread in the differences, whatever the users'


def test_paired_interval_covers_zero_for_noise_and_excludes_it_for_a_real_gain():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 0.3, 900)
    e = rng.normal(0, 0.05, 450)
    noise = paired_difference(base + np.concatenate([e, -e]), base)  # differences with mean exactly 0
    assert noise["diff"] == pytest.approx(0.0, abs=1e-12) and noise["ci95"][0] < 0 < noise["ci95"][1]
    gain = paired_difference(base + rng.normal(0.02, 0.05, 900), base)
    assert gain["ci95"][0] > 0 and gain["ci95"][0] < gain["diff"] < gain["ci95"][1]
    assert paired_difference(base, base[:-1]) is None and paired_difference([], []) is None


def test_by_popularity_puts_each_target_in_the_bucket_of_its_training_count():
    counts = np.zeros(6, dtype=np.int64)
    counts[1:] = [0, 3, 10, 11, 500]  # items 1..5
    got = by_popularity(np.array([1, 2, 3, 4, 5, 5]), np.array([0, -1, 1, 0, 0, 20]), counts)
    assert got["0 (no interaction)"] == {"ndcg@10": 1.0, "hr@10": 1.0, "events": 1}
    assert got["1-10 (tail)"] == pytest.approx({"ndcg@10": 1 / np.log2(3) / 2, "hr@10": 0.5, "events": 2})
    assert got["11-50"]["events"] == 1 and got["51-200"]["events"] == 0
    assert got[">200"] == pytest.approx({"ndcg@10": 0.5, "hr@10": 0.5, "events": 2})


def test_new_items_are_a_bucket_of_their_own_ahead_of_the_counts():
    counts = np.zeros(6, dtype=np.int64)
    counts[1:] = [0, 3, 10, 11, 500]
    got = by_popularity(np.array([1, 2, 5, 5]), np.array([0, -1, 0, 20]), counts, new_items=np.array([2, 5]))
    assert list(got)[0] == "new items (protocol C)"
    assert got["new items (protocol C)"] == pytest.approx({"ndcg@10": 1 / 3, "hr@10": 1 / 3, "events": 3})
    assert got["0 (no interaction)"]["events"] == 1 and got[">200"]["events"] == 0
