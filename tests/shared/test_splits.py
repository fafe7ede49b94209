"""Protocol splits leak nothing: no stream event or evaluation target reaches a training prefix."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shared.data.dataset import build_dataset
from shared.data.splits import loo_split, min_stream_user_length, stream_split
from shared.errors import ConfigError, EmptyDatasetError


@st.composite
def datasets(draw):
    num_users = draw(st.integers(1, 8))
    events = []
    for user in range(num_users):
        length = draw(st.integers(1, 25))
        items = draw(st.lists(st.integers(1, 30), min_size=length, max_size=length))
        times = draw(st.lists(st.integers(0, 5), min_size=length, max_size=length))  # many ties
        events += [(f"u{user}", str(i), t) for i, t in zip(items, times)]
    return build_dataset(events)


def _is_prefix(part, whole):
    return len(part) <= len(whole) and np.array_equal(whole[: len(part)], part)


@settings(max_examples=300, deadline=None)
@given(datasets(), st.integers(1, 12), st.integers(0, 5))
def test_stream_split_never_leaks(dataset, stream_length, cloud_lag):
    seqs = dataset.sequences()
    try:
        split = stream_split(dataset, stream_length, cloud_lag)
    except ConfigError:
        assert all(len(s) < min_stream_user_length(stream_length, cloud_lag) for s in seqs)
        return
    for n, user in enumerate(split.users):
        seq = seqs[user - 1]
        cut = len(seq) - stream_length  # first stream position
        assert np.array_equal(split.streams[n], seq[cut:])
        for train in (split.srm_train(), split.cloud_train()):
            prefix = train.train[n]
            # Training data is a strict prefix ending before the validation target and the stream.
            assert _is_prefix(prefix, seq) and len(prefix) + 1 <= cut
            assert train.valid.targets[n] == seq[len(prefix)]
        assert len(split.cloud_train().train[n]) + 1 + cloud_lag == cut
        assert _is_prefix(split.cloud_seen[n], split.past[n])


@settings(max_examples=300, deadline=None)
@given(datasets())
def test_loo_split_never_leaks(dataset):
    seqs = dataset.sequences()
    try:
        split = loo_split(dataset)
    except EmptyDatasetError:
        assert all(len(s) < 3 for s in seqs)
        return
    for n, user in enumerate(split.users):
        seq = seqs[user - 1]
        assert np.array_equal(split.train[n], seq[:-2])
        assert split.valid.targets[n] == seq[-2] and split.test.targets[n] == seq[-1]
        assert np.array_equal(split.test.histories[n], seq[:-1])


def test_stream_split_refuses_impossible_parameters(tiny_dataset):
    with pytest.raises(ConfigError, match="stream_length"):
        stream_split(tiny_dataset, stream_length=500)
    with pytest.raises(ConfigError, match="cloud_lag"):
        stream_split(tiny_dataset, cloud_lag=-1)


def test_ties_keep_file_order():
    data = build_dataset([("1", "a", 5), ("1", "b", 5), ("1", "c", 1)])
    names = [data.items[i - 1].raw_id for i in data.sequences()[0]]
    assert names == ["c", "a", "b"]
