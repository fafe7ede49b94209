"""Model plumbing for the simulator: stand-ins (popularity, Markov SRM), loaders, and the score memo."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from device.runtime.artifact import load_reranker as load_device
from shared.generator import GENERATORS, PopularityGenerator, generator_from_spec


class Reranker(Protocol):
    """What the device runtime's reranker offers: scores of candidates given left-padded histories."""

    history_length: int

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray: ...


class MarkovReranker:
    """Numpy SRM stand-in: first-order item transitions (with popularity as a weak prior)."""

    history_length = 8

    def __init__(self, num_items: int, version: str = "markov-0"):
        self.num_items, self.version = num_items, version
        self.trans = np.zeros((num_items + 1, num_items + 1), dtype=np.float32)
        self.pop = np.zeros(num_items + 1, dtype=np.float32)

    def fit(self, sequences: Sequence[Sequence[int]]) -> "MarkovReranker":
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            np.add.at(self.pop, seq, 1.0)
            if len(seq) > 1:
                np.add.at(self.trans, (seq[:-1], seq[1:]), 1.0)
        return self

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        histories, candidates = np.asarray(histories), np.asarray(candidates)  # (B, T), (B, C)
        last = histories[:, -1:]  # (B, 1), 0 = no history
        prev = histories[:, -2:-1] if histories.shape[1] > 1 else last
        out = np.log1p(self.trans[last, candidates]) + 0.5 * np.log1p(self.trans[prev, candidates])
        return (out + 0.05 * np.log1p(self.pop[candidates]) - 2.0).astype(np.float32)  # (B, C) logits


def popularity_generator(sequences: Sequence[np.ndarray], num_items: int) -> PopularityGenerator:
    return PopularityGenerator.from_sequences(list(sequences), num_items)


def load_generator(spec: str, dataset, cloud_seen: Sequence[np.ndarray]):
    """The cloud generator of a spec through the generator registry ("popularity", "llm:DIR", a registered
    "NAME[:ARG]"; a bare folder names the LLM), or the popularity stand-in fitted on what the cloud has seen."""
    if not spec:
        return popularity_generator(cloud_seen, dataset.num_items)
    if spec.partition(":")[0] not in GENERATORS:
        spec = f"llm:{spec}"
    return generator_from_spec(spec, dataset, cloud_seen)


def load_reranker(folder: str, fmt: str, dataset, past: Sequence[np.ndarray]):
    """The exported SRM through the device runtime (manifest verified), or the Markov stand-in."""
    if not folder:
        return MarkovReranker(dataset.num_items).fit(past)
    path = Path(folder)
    sub = path / fmt
    if (sub / "manifest.json").is_file():
        path = sub
    return load_device(path, vocab_hash=dataset.vocab_hash)  # a model for another catalogue is refused
