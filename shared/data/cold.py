"""Protocol C: a seeded share of the catalogue is cold (never trained on) and figures are sliced cold/tail/warm.

The cold items lose every interaction from every training prefix and every validation target; they stay in the
catalogue and in the test histories (a device's history really holds them). Evaluation reports separately on the
examples whose target is cold, a tail item (1..`tail_max` interactions in the training prefixes actually used,
counted after the cold items are removed) or a warm item (more than `tail_max`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from shared.data.dataset import Dataset
from shared.data.splits import Examples, StreamSplit, TrainSplit, loo_split, stream_split
from shared.errors import ConfigError
from shared.metrics import hit_rate, ndcg, ndcg_gains, recall

PROTOCOL_C = ("C (cold items: a seeded share of the catalogue, 10% by default, is removed from every training "
              "prefix and validation target; full ranking, seen items removed; figures sliced by the target: cold, "
              "tail = 1-10 training interactions, warm = more)")
PROTOCOLS = {"loo": "A (loo, full ranking, seen items removed)", "cold": PROTOCOL_C + "; LOO test targets",
             "cold-stream": PROTOCOL_C + "; every protocol B stream event"}
SLICES = ("all", "cold", "tail", "warm")
TAIL_MAX = 10


def draw_cold_items(num_items: int, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Sorted int64 ids in 1..num_items: round(fraction * num_items) of them (at least 1 when fraction > 0)."""
    if not 0 <= fraction < 1:
        raise ConfigError("cold_fraction", fraction, "must be in [0, 1)")
    if num_items < 1:
        raise ConfigError("num_items", num_items, "the catalogue is empty")
    count = round(fraction * num_items)
    count = max(count, 1) if fraction > 0 else 0
    drawn = np.random.default_rng(seed).choice(np.arange(1, num_items + 1, dtype=np.int64), size=count, replace=False)
    return np.sort(drawn).astype(np.int64)


def without_items(split: TrainSplit, items: np.ndarray) -> TrainSplit:
    """The split with `items` gone from every training prefix and validation history (order kept), and the
    validation examples whose target is one of them dropped; `test` is unchanged.

    A user whose prefix becomes empty stays in `train` (an empty array, so `users` stays aligned with `train`):
    training windows skip sequences too short to hold a target, and models score an all-padding history.
    """
    items = np.asarray(items, dtype=np.int64)

    def keep(seq: np.ndarray) -> np.ndarray:
        return seq[~np.isin(seq, items)]

    rows = np.flatnonzero(~np.isin(split.valid.targets, items))
    valid = Examples(split.valid.users[rows], tuple(keep(split.valid.histories[r]) for r in rows),
                     split.valid.targets[rows])
    return TrainSplit(split.users, tuple(keep(p) for p in split.train), valid, split.test)


def loo_cold_split(dataset: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[TrainSplit, np.ndarray]:
    """Protocol A's split without the cold items in training and validation; returns (split, cold ids)."""
    cold = draw_cold_items(dataset.num_items, fraction, seed)
    return without_items(loo_split(dataset), cold), cold


@dataclass(frozen=True)
class ColdStreamSplit(StreamSplit):
    """Protocol B's split whose training splits never see the cold items.

    `past`, `cloud_seen` and `streams` are unchanged: they are what devices hold and replay (histories may contain
    cold items); only `srm_train()` and `cloud_train()`, the data models learn from, drop them.
    """

    cold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def srm_train(self) -> TrainSplit:
        return without_items(super().srm_train(), self.cold)

    def cloud_train(self) -> TrainSplit:
        return without_items(super().cloud_train(), self.cold)


def stream_cold_split(dataset: Dataset, stream_length: int = 10, cloud_lag: int = 3, fraction: float = 0.1,
                      seed: int = 0) -> ColdStreamSplit:
    """Protocol B (stream_split) with a cold draw removed from its training splits."""
    base = stream_split(dataset, stream_length, cloud_lag)
    cold = draw_cold_items(dataset.num_items, fraction, seed)
    return ColdStreamSplit(**{f.name: getattr(base, f.name) for f in fields(StreamSplit)}, cold=cold)


def stream_examples(split: StreamSplit) -> Examples:
    """Every stream event as a next-item example: user n, step t -> history past + stream[:t], target stream[t]."""
    users, histories, targets = [], [], []
    for user, past, stream in zip(split.users, split.past, split.streams):
        for t in range(len(stream)):
            users.append(int(user))
            histories.append(np.concatenate([past, stream[:t]]))
            targets.append(int(stream[t]))
    return Examples(np.asarray(users, dtype=np.int64), tuple(histories), np.asarray(targets, dtype=np.int64))


def item_counts(sequences, num_items: int) -> np.ndarray:
    """(num_items + 1,) int64 interactions per item over the given training prefixes (index 0 = padding)."""
    flat = [np.asarray(s, dtype=np.int64) for s in sequences]
    flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=num_items + 1).astype(np.int64)


def slice_of(targets: np.ndarray, cold_ids: np.ndarray, counts: np.ndarray, tail_max: int = TAIL_MAX) -> np.ndarray:
    """Each target's slice: "cold" (drawn cold; wins over counts), "warm" (> tail_max training interactions) or
    "tail" (the rest, 1..tail_max; a non-cold item that no training prefix holds also counts as tail)."""
    targets = np.asarray(targets, dtype=np.int64)
    warm = np.asarray(counts)[targets] > tail_max
    return np.where(np.isin(targets, cold_ids), "cold", np.where(warm, "warm", "tail"))


def per_example(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-example NDCG@k gains (0 outside the top k), aligned with the examples: the unit of paired bootstraps."""
    return ndcg_gains(ranks, k)


def slice_figures(ranks: np.ndarray, targets: np.ndarray, cold_ids: np.ndarray, counts: np.ndarray,
                  ks=(10, 50), tail_max: int = TAIL_MAX) -> dict:
    """`{slice}/hr@K`, `{slice}/ndcg@K`, `{slice}/recall@K` and `{slice}/users` for the slices all, cold, tail and
    warm, plus `users` and `cold_items`. `ranks` are 0-based (-1 = absent): full-catalogue or list ranks.

    An empty slice reports 0.0 for its metrics (the project's rule); its `users` = 0 says so. `tail/unseen` counts
    the tail examples whose (non-cold) target no training prefix holds.
    """
    ranks, targets = np.asarray(ranks), np.asarray(targets, dtype=np.int64)
    names = slice_of(targets, cold_ids, counts, tail_max)
    out: dict = {"users": int(len(ranks)), "cold_items": int(len(cold_ids))}
    for name in SLICES:
        mask = np.ones(len(ranks), dtype=bool) if name == "all" else names == name
        out[f"{name}/users"] = int(mask.sum())
        for k in ks:
            out[f"{name}/hr@{k}"] = hit_rate(ranks[mask], k)
            out[f"{name}/ndcg@{k}"] = ndcg(ranks[mask], k)
            out[f"{name}/recall@{k}"] = recall(ranks[mask], k)
    out["tail/unseen"] = int(((names == "tail") & (np.asarray(counts)[targets] == 0)).sum())
    return out


@dataclass(frozen=True)
class ColdWorld:
    """What one protocol trains on and judges: the training split, the examples, the cold ids, the counts."""

    protocol: str
    train: TrainSplit
    examples: Examples
    cold: np.ndarray
    counts: np.ndarray  # (N + 1,) interactions per item in `train.train`: the tail/warm line

    def figures(self, ranks: np.ndarray, per_example: str | Path | None = None) -> dict:
        """slice_figures() of `ranks` (one per example); with `per_example`, also save_per_example() there."""
        targets = self.examples.targets
        if per_example is not None:
            save_per_example(per_example, self.examples, ranks, slice_of(targets, self.cold, self.counts))
        return slice_figures(ranks, targets, self.cold, self.counts)


def cold_world(dataset: Dataset, protocol: str, fraction: float = 0.1, seed: int = 0) -> ColdWorld:
    """loo (protocol A's test targets, nothing cold), cold (the same targets, `fraction` cold) or cold-stream
    (every stream event; the SRM's protocol B past minus the cold items trains)."""
    if protocol == "cold-stream":
        split = stream_cold_split(dataset, fraction=fraction, seed=seed)
        train, examples, cold = split.srm_train(), stream_examples(split), split.cold
    elif protocol in ("loo", "cold"):
        train, cold = loo_cold_split(dataset, fraction if protocol == "cold" else 0.0, seed)
        examples = train.test
    else:
        raise ConfigError("protocol", protocol, f"must be one of {', '.join(PROTOCOLS)}")
    return ColdWorld(protocol, train, examples, cold, item_counts(train.train, dataset.num_items))


def save_per_example(path: str | Path, examples: Examples, ranks: np.ndarray, slices: np.ndarray) -> Path:
    """Write users, targets, slice, rank and NDCG@10 gain per example (.npz, atomic) for paired comparisons."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, users=examples.users, targets=examples.targets, slice=np.asarray(slices, dtype=str),
                 ranks=np.asarray(ranks, dtype=np.int64), ndcg10=per_example(ranks, 10))
    os.replace(tmp, path)
    return path


def recorded_draw(protocol: str, seed: int | None, fraction: float | None, trained: dict,
                  where: str) -> tuple[int, float]:
    """The cold draw to evaluate on: the one `trained` (a model's recorded protocol, cold_seed, cold_fraction) was
    trained with; another protocol, seed or fraction is refused (ConfigError): its cold items were trained on.
    Protocol A ("loo") has no draw (0, 0.0): any model may be evaluated on it."""
    if protocol == "loo":
        return 0, 0.0
    if trained.get("protocol") != protocol or trained.get("cold_seed") is None:
        raise ConfigError("protocol", protocol, f"{where} was trained on protocol {trained.get('protocol')!r} "
                                                f"(cold_seed {trained.get('cold_seed')})")
    for flag, key, given in (("seed", "cold_seed", seed), ("cold_fraction", "cold_fraction", fraction)):
        if given is not None and given != trained[key]:
            raise ConfigError(flag, given, f"{where} was trained with {key} = {trained[key]!r}")
    return int(trained["cold_seed"]), float(trained["cold_fraction"])
