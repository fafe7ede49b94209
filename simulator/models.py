"""Model plumbing for the simulator: stand-ins (popularity, Markov SRM), loaders, and the score memo."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from device.runtime.artifact import load_reranker as load_device
from device.runtime.encoder import OnnxUserEncoder, UserEncoder
from shared.vector_table import VECTOR_TABLE_NAME, VectorTable, dequantise
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


class EncoderCatalogue:
    """A catalogue-free device's scores for the simulator's score memo: the user encoder's vector after the
    history's (dequantised int8) item vectors, dotted with each candidate's vector, exactly what a device computes
    when every vector has reached it (with the consumed item, or with the lists). It scores the whole table for the
    memo and the labelled full-catalogue reference only: sessions never read more than the candidates they hold.

    Keyed by the model's window, as the memo is: a GRU's state here is that of its window (a device's recurrent
    state also remembers items that left it; device.runtime.encoder)."""

    def __init__(self, encoder: UserEncoder, table: VectorTable):
        self.encoder, self.table, self.manifest, self.version = encoder, table, encoder.manifest, encoder.manifest.version
        self.history_length = encoder.history_length
        self.vectors = dequantise(table.values, table.scales)  # (N + 1, d), row 0 (padding) all zero

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        out = np.zeros(candidates.shape, dtype=np.float32)
        for b, row in enumerate(np.asarray(histories)):
            real = row[row > 0]
            if real.size:
                out[b] = self.vectors[candidates[b]] @ self.encoder.encode(self.vectors[real])[1]
        return out

    @property
    def has_partition(self) -> bool:
        return self.encoder.has_partition

    def log_partition(self, history: np.ndarray) -> np.ndarray | None:
        """The partition head's [log Z, log T] after one left-padded history (1, T); None without a head."""
        row = np.asarray(history).reshape(-1)
        real = row[row > 0]
        if not self.encoder.has_partition or not real.size:
            return None
        return self.encoder.encode(self.vectors[real])[2]


class SharedEncoder(OnnxUserEncoder):
    """The user encoder every simulated device holds, remembering what it computed across sessions.

    Every run of a grid replays the same users through the same events, and with each consumed item's vector arriving
    with it, a user's encoder state after step t is the same in every run: re-computing it per run was most of a
    grid's time. So `encode` (a state rebuilt from a history's vectors) and `step` (one event) are remembered, a
    step by the identity of the state it starts from (states are never modified in place, encoder.py, and the memo
    keeps each one it keys on alive, so an id is never reused while its entry exists) and the vector's bytes. The
    figures are those of computing every step; at most `keep` entries are kept (then the memo starts again)."""

    def __init__(self, encoder: OnnxUserEncoder, keep: int = 20000):
        self.__dict__.update(encoder.__dict__)  # the same loaded graph and manifest
        self._encoded: dict = {}
        self._stepped: dict = {}
        self._keep = keep

    def _remember(self, memo: dict, key, compute):
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= self._keep:
                memo.clear()
            hit = memo[key] = compute()
        return hit

    def encode(self, vectors: np.ndarray):
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[-self.history_length:])
        return self._remember(self._encoded, vectors.tobytes(), lambda: OnnxUserEncoder.encode(self, vectors))

    def step(self, state, vector: np.ndarray):
        vector = np.ascontiguousarray(vector, dtype=np.float32)
        _, *out = self._remember(self._stepped, (id(state), vector.tobytes()),
                                 lambda: (state, *OnnxUserEncoder.step(self, state, vector)))
        return tuple(out)


def load_reranker(folder: str, fmt: str, dataset, past: Sequence[np.ndarray]):
    """The exported SRM through the device runtime (manifest verified), or the Markov stand-in. A user-encoder
    folder (the catalogue-free device) comes with its vector table, verified against the manifest."""
    if not folder:
        return MarkovReranker(dataset.num_items).fit(past)
    path = Path(folder)
    sub = path / fmt
    if (sub / "manifest.json").is_file():
        path = sub
    model = load_device(path, vocab_hash=dataset.vocab_hash)  # a model for another catalogue is refused
    if isinstance(model, UserEncoder):
        table = VectorTable.load(path / VECTOR_TABLE_NAME, model.manifest.version, model.manifest.vector_table_sha256)
        return EncoderCatalogue(model, table)
    return model
