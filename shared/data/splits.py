"""Protocol splits (docs/design.md section 3): A = leave-one-out, B = streaming replay.

Every split is built from positions in each user's chronological sequence, so a test can prove
that no stream event and no validation/test target is ever part of a training prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.dataset import Dataset
from shared.errors import ConfigError, EmptyDatasetError


@dataclass(frozen=True)
class Examples:
    """Next-item examples: for row b, `targets[b]` follows `histories[b]` (oldest first)."""

    users: np.ndarray  # (B,) int64 dense user ids
    histories: tuple[np.ndarray, ...]  # B arrays of item ids, full prefix (models truncate)
    targets: np.ndarray  # (B,) int64 item ids

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class TrainSplit:
    """What one model may learn from (`train` prefixes) and the examples it is judged on."""

    users: np.ndarray  # (U,) dense ids of the users in `train`
    train: tuple[np.ndarray, ...]  # per user, the training prefix
    valid: Examples  # targets right after each training prefix
    test: Examples | None = None


def _examples(users: list[int], prefixes: list[np.ndarray], targets: list[int]) -> Examples:
    return Examples(np.asarray(users, dtype=np.int64), tuple(prefixes), np.asarray(targets, dtype=np.int64))


def _holdout_last(users: np.ndarray, sequences: list[np.ndarray]) -> TrainSplit:
    """Train on each sequence minus its last item; that last item is the validation target."""
    train = tuple(seq[:-1] for seq in sequences)
    valid = _examples(list(users), list(train), [int(seq[-1]) for seq in sequences])
    return TrainSplit(users, train, valid)


def loo_split(dataset: Dataset) -> TrainSplit:
    """Protocol A: last item = test target, the one before = validation target, the rest trains.

    Users with fewer than 3 interactions cannot be evaluated and are left out.
    """
    seqs = dataset.sequences()
    users = [u for u in range(1, dataset.num_users + 1) if len(seqs[u - 1]) >= 3]
    if not users:
        raise EmptyDatasetError("no user has the 3 interactions protocol A needs")
    train = [seqs[u - 1][:-2] for u in users]
    valid = _examples(users, train, [int(seqs[u - 1][-2]) for u in users])
    test = _examples(users, [seqs[u - 1][:-1] for u in users], [int(seqs[u - 1][-1]) for u in users])
    return TrainSplit(np.asarray(users, dtype=np.int64), tuple(train), valid, test)


@dataclass(frozen=True)
class StreamSplit:
    """Protocol B: per user, the last `stream_length` items are the live stream.

    `past` is everything before the stream (the SRM trains on it); `cloud_seen` is the past minus
    its last `cloud_lag` items (the cloud LLM trains on it and generates the first candidate list
    from it). Users too short to hold a stream, a lag and a validation item are left out.
    """

    users: np.ndarray  # (U,) dense user ids taking part
    past: tuple[np.ndarray, ...]
    cloud_seen: tuple[np.ndarray, ...]
    streams: tuple[np.ndarray, ...]
    stream_length: int
    cloud_lag: int

    def srm_train(self) -> TrainSplit:
        """SRM: learns from the past minus its last item, which is the validation target."""
        return _holdout_last(self.users, list(self.past))

    def cloud_train(self) -> TrainSplit:
        """Cloud LLM: learns from what the cloud has seen minus its last item (validation)."""
        return _holdout_last(self.users, list(self.cloud_seen))

    def __len__(self) -> int:
        return len(self.users)


def min_stream_user_length(stream_length: int, cloud_lag: int) -> int:
    """Shortest sequence protocol B can use: stream + lag + one validation and one training item."""
    return stream_length + cloud_lag + 2


def stream_split(dataset: Dataset, stream_length: int = 10, cloud_lag: int = 3) -> StreamSplit:
    """Build protocol B; refuses parameters that leave no user."""
    if stream_length < 1:
        raise ConfigError("stream_length", stream_length, "must be at least 1")
    if cloud_lag < 0:
        raise ConfigError("cloud_lag", cloud_lag, "must be 0 or more")
    need = min_stream_user_length(stream_length, cloud_lag)
    seqs = dataset.sequences()
    users = [u for u in range(1, dataset.num_users + 1) if len(seqs[u - 1]) >= need]
    if not users:
        longest = max((len(s) for s in seqs), default=0)
        raise ConfigError("stream_length", stream_length,
                          f"no user has the {need} interactions needed (longest history: {longest})")
    past = tuple(seqs[u - 1][:-stream_length] for u in users)
    cloud_seen = tuple(p[: len(p) - cloud_lag] for p in past)
    streams = tuple(seqs[u - 1][-stream_length:] for u in users)
    return StreamSplit(np.asarray(users, dtype=np.int64), past, cloud_seen, streams, stream_length, cloud_lag)
