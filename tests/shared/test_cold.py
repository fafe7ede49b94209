"""Protocol C: cold items never reach a training prefix or validation target; figures slice cold/tail/warm."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shared.data.cold import (ColdStreamSplit, cold_world, draw_cold_items, item_counts, loo_cold_split,
                              per_example, slice_figures, slice_of, stream_cold_split, stream_examples, without_items)
from shared.data.splits import StreamSplit, loo_split, stream_split
from shared.errors import ConfigError, EmptyDatasetError
from tests.shared.test_splits import datasets

FRACTIONS = st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.9])


def _kept(seq, cold):
    return seq[~np.isin(seq, cold)]


def _assert_cold_free(train, base, cold):
    """`train` is `base` with the cold items gone: prefixes filtered in order, cold validation targets dropped."""
    assert np.array_equal(train.users, base.users) and len(train.train) == len(base.train)
    for prefix, original in zip(train.train, base.train):
        assert not np.isin(prefix, cold).any()
        assert np.array_equal(prefix, _kept(original, cold))  # every non-cold interaction kept, in order
    keep = ~np.isin(base.valid.targets, cold)
    assert np.array_equal(train.valid.targets, base.valid.targets[keep])
    assert np.array_equal(train.valid.users, base.valid.users[keep])
    assert not np.isin(train.valid.targets, cold).any()
    kept_histories = [h for h, k in zip(base.valid.histories, keep) if k]
    for history, original in zip(train.valid.histories, kept_histories, strict=True):
        assert np.array_equal(history, _kept(original, cold))


@settings(max_examples=200, deadline=None)
@given(datasets(), FRACTIONS, st.integers(0, 2**32 - 1))
def test_loo_cold_split_never_trains_on_cold_items(dataset, fraction, seed):
    try:
        base = loo_split(dataset)
    except EmptyDatasetError:
        return
    split, cold = loo_cold_split(dataset, fraction, seed)
    assert np.array_equal(cold, draw_cold_items(dataset.num_items, fraction, seed))
    _assert_cold_free(split, base, cold)
    # The test examples are protocol A's, untouched: histories may hold cold items, as a device's would.
    assert np.array_equal(split.test.targets, base.test.targets)
    assert all(np.array_equal(a, b) for a, b in zip(split.test.histories, base.test.histories, strict=True))


@settings(max_examples=200, deadline=None)
@given(datasets(), st.integers(1, 6), st.integers(0, 3), FRACTIONS, st.integers(0, 2**32 - 1))
def test_stream_cold_split_never_trains_on_cold_items(dataset, stream_length, cloud_lag, fraction, seed):
    try:
        base = stream_split(dataset, stream_length, cloud_lag)
    except ConfigError:
        return
    split = stream_cold_split(dataset, stream_length, cloud_lag, fraction, seed)
    assert isinstance(split, StreamSplit)
    assert np.array_equal(split.cold, draw_cold_items(dataset.num_items, fraction, seed))
    _assert_cold_free(split.srm_train(), base.srm_train(), split.cold)
    _assert_cold_free(split.cloud_train(), base.cloud_train(), split.cold)
    for name in ("users", "past", "cloud_seen", "streams"):  # what devices hold and replay is unchanged
        assert all(np.array_equal(a, b) for a, b in zip(getattr(split, name), getattr(base, name), strict=True))


@pytest.mark.parametrize("num_items, fraction, count", [(1682, 0.1, 168), (60, 0.1, 6), (5, 0.01, 1), (9, 0.0, 0)])
def test_draw_cold_items_is_seeded_sorted_and_sized(num_items, fraction, count):
    cold = draw_cold_items(num_items, fraction, seed=3)
    assert cold.dtype == np.int64 and len(cold) == count and len(set(cold.tolist())) == count
    assert np.array_equal(cold, np.sort(cold)) and (count == 0 or (cold.min() >= 1 and cold.max() <= num_items))
    assert np.array_equal(cold, draw_cold_items(num_items, fraction, seed=3))
    if count > 2:
        assert not np.array_equal(cold, draw_cold_items(num_items, fraction, seed=4))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_draw_cold_items_refuses_bad_fractions(fraction):
    with pytest.raises(ConfigError, match="cold_fraction"):
        draw_cold_items(100, fraction)


def test_without_items_keeps_users_whose_prefix_empties(tiny_dataset):
    base = loo_split(tiny_dataset)
    everything = np.arange(1, tiny_dataset.num_items + 1)
    split = without_items(base, everything)
    assert len(split.train) == len(split.users) == len(base.users)
    assert all(len(p) == 0 for p in split.train) and len(split.valid) == 0 and split.test is base.test


def test_stream_examples_are_every_stream_event(tiny_dataset):
    split = stream_cold_split(tiny_dataset, stream_length=4, cloud_lag=2)
    examples = stream_examples(split)
    assert len(examples) == 4 * len(split)
    seqs = tiny_dataset.sequences()
    for b in (0, 5, len(examples) - 1):
        user, t = examples.users[b], b % 4
        seq = seqs[user - 1]
        cut = len(seq) - 4 + t
        assert np.array_equal(examples.histories[b], seq[:cut]) and examples.targets[b] == seq[cut]


def test_item_counts_and_slices():
    counts = item_counts([np.array([2, 3, 3]), np.array([], dtype=np.int64), np.array([3])], num_items=4)
    assert counts.tolist() == [0, 0, 1, 3, 0]
    names = slice_of(np.array([1, 2, 3, 4]), np.array([3]), counts, tail_max=2)
    # item 3 has 3 interactions but is drawn cold: cold wins; item 4 is unseen and not cold: tail.
    assert names.tolist() == ["tail", "tail", "cold", "tail"]
    assert slice_of(np.array([3]), np.array([], dtype=np.int64), counts, tail_max=2).tolist() == ["warm"]


def test_slice_figures_by_hand():
    counts = np.zeros(5, dtype=np.int64)
    counts[[2, 3, 4]] = [5, 20, 11]  # item 2 tail, items 3 and 4 warm (> 10); item 1 is cold
    ranks = np.array([0, 3, -1, 12])
    fig = slice_figures(ranks, np.array([1, 2, 3, 4]), np.array([1]), counts, ks=(10, 50))
    g3, g12 = 1 / math.log2(5), 1 / math.log2(14)  # NDCG gains of ranks 3 and 12
    expected = {"users": 4, "cold_items": 1, "all/users": 4, "cold/users": 1, "tail/users": 1, "warm/users": 2,
                "all/hr@10": 0.5, "all/ndcg@10": (1 + g3) / 4, "all/hr@50": 0.75, "all/ndcg@50": (1 + g3 + g12) / 4,
                "cold/hr@10": 1.0, "cold/ndcg@10": 1.0, "tail/hr@10": 1.0, "tail/ndcg@10": g3,
                "warm/hr@10": 0.0, "warm/ndcg@10": 0.0, "warm/recall@50": 0.5, "warm/ndcg@50": g12 / 2,
                "all/recall@10": 0.5, "tail/unseen": 0}
    for key, value in expected.items():
        assert fig[key] == pytest.approx(value), key
    assert {f"{s}/{m}@{k}" for s in ("all", "cold", "tail", "warm") for m in ("hr", "ndcg", "recall")
            for k in (10, 50)} <= set(fig)
    assert per_example(ranks, 10) == pytest.approx([1.0, g3, 0.0, 0.0])


def test_slice_figures_on_an_empty_slice_report_zero_users():
    fig = slice_figures(np.array([2]), np.array([1]), np.array([], dtype=np.int64), np.array([0, 50]))
    assert fig["cold/users"] == 0 and fig["cold/hr@10"] == 0.0 and fig["warm/hr@10"] == 1.0 and fig["cold_items"] == 0


def test_cold_world_counts_the_training_prefixes_actually_used(tiny_dataset):
    for protocol in ("loo", "cold", "cold-stream"):
        world = cold_world(tiny_dataset, protocol, 0.1, seed=1)
        assert np.array_equal(world.counts, item_counts(world.train.train, tiny_dataset.num_items))
        assert (world.counts[world.cold] == 0).all()
        assert len(world.cold) == (0 if protocol == "loo" else 6)
    assert isinstance(stream_cold_split(tiny_dataset), ColdStreamSplit)
    with pytest.raises(ConfigError, match="protocol"):
        cold_world(tiny_dataset, "stream")
