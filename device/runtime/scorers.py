"""What a DeviceSession scores with: the SRM as seen from one user's session (no torch).

Two kinds, one interface (`SessionScorer`), chosen by the model's manifest kind (`session_scorer`):

- `IdScorer` ("scorer" artifacts): the model holds the item table; it is given the history window of ids (rolled
  per event) and candidate ids. It knows the items 1..manifest.num_items.
- `VectorScorer` ("user-encoder" artifacts, catalogue-free): the model holds no table. The session's bounded
  `VectorCache` keeps the vectors the cloud sent (with lists, and for history items the device named as missing);
  a `UserState` is updated by one encoder step per event. It knows the items whose vectors it has. An event whose
  item has no vector leaves the state as it is and marks the item missing: the next request names it, and the
  state is rebuilt from the recent history when its vector arrives.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from device.runtime.encoder import UserEncoder
from device.runtime.vectors import VectorCache
from shared.errors import LSC4RecError
from shared.sequences import pad_left
from shared.vector_table import ItemVectors, VectorError
from shared.wire import MAX_MISSING_VECTORS


class SessionScorer(Protocol):
    catalogue_free: bool

    def on_item(self, item: int) -> bool: ...  # the history grew by `item`; True: the model changed (ask for a list)

    def known(self, items: np.ndarray) -> np.ndarray: ...  # (n,) bool: the items it can score

    def logits(self, items: np.ndarray) -> np.ndarray | None: ...  # known items only; None: the model failed

    def request_fields(self) -> dict: ...  # CandidateRequest fields it needs (with_vectors, missing_vectors)

    def receive(self, vectors: ItemVectors | None) -> None: ...  # vectors from the cloud (VectorError if unfit)

    def log_partition(self) -> np.ndarray | None: ...  # [log Z, log T] of the partition head, None without one

    @property
    def has_partition(self) -> bool: ...


class IdScorer:
    """A "scorer" artifact: history ids -> scores of candidate ids (the item table is in the model)."""

    catalogue_free = False

    def __init__(self, reranker, history: list[int]):
        self.reranker = reranker
        self.num_items = reranker.manifest.num_items  # the SRM's catalogue; the cloud's may be larger
        self._score = getattr(reranker, "score_trusted", reranker.score)  # inputs are built and checked here
        self._view = [i for i in history if i <= self.num_items]  # the history without items beyond the catalogue
        self._window = pad_left([self._view], reranker.history_length)

    def on_item(self, item: int) -> bool:
        if item <= self.num_items:  # an item beyond the SRM's catalogue stays out of its view
            self._view.append(item)
            window = self._window
            window[0, :-1] = window[0, 1:]
            window[0, -1] = item
        return False

    def known(self, items: np.ndarray) -> np.ndarray:
        return items <= self.num_items

    def logits(self, items: np.ndarray) -> np.ndarray | None:
        length = self.reranker.history_length
        if self._window.shape[1] != length:  # a swapped-in model with another history length
            self._window = pad_left([self._view], length)
        try:
            logits = self._score(self._window, items[None, :])[0].astype(np.float64)
        except LSC4RecError:
            return None
        return logits if np.isfinite(logits).all() else None

    def request_fields(self) -> dict:
        return {}

    @property
    def has_partition(self) -> bool:  # a reranker that says so (the simulator's memo of a user encoder with a head)
        return bool(getattr(self.reranker, "has_partition", False))

    def log_partition(self) -> np.ndarray | None:
        """From a reranker that predicts it for a window (the simulator's memo of a user encoder)."""
        return self.reranker.log_partition(self._window) if self.has_partition else None

    def receive(self, vectors: ItemVectors | None) -> None:
        return None


class VectorScorer:
    """A "user-encoder" artifact: the catalogue-free device (module docstring). `model` is the encoder, or a
    device.runtime.ModelHolder of one: a newer version swapped in there is taken at the next event, with an empty
    cache (vectors belong to one version) and every window item missing, so the next request asks for them."""

    catalogue_free = True

    def __init__(self, model, history: list[int], cache_capacity: int = 4096):
        self._model, self._capacity = model, cache_capacity
        self._recent = list(history)
        self._use(getattr(model, "current", model))

    def _use(self, encoder: UserEncoder) -> None:
        self.encoder = encoder
        self.cache = VectorCache(encoder.dim, encoder.manifest.version, self._capacity)
        self.state = encoder.new_state()
        self._recent = self._recent[-encoder.history_length:]  # the model's window of ids
        self._missing: set[int] = set(self._recent)  # window items whose vectors the state lacks
        self._rows_for: tuple[np.ndarray, np.ndarray] | None = None  # (items, their vectors) of the last call
        self._failed = False

    def on_item(self, item: int) -> bool:
        current = getattr(self._model, "current", self.encoder)
        swapped = current is not self.encoder
        if swapped:
            self._use(current)
        self._recent.append(item)
        if len(self._recent) > self.encoder.history_length:
            gone = self._recent.pop(0)
            if gone not in self._recent:
                self._missing.discard(gone)
        vector = self.cache.get(item)
        if vector is None:
            self._missing.add(item)
            return swapped
        try:
            self.state.append(vector)
            self._failed = False
        except LSC4RecError:
            self._failed = True
        return swapped

    def known(self, items: np.ndarray) -> np.ndarray:
        return np.fromiter((int(i) in self.cache for i in items), dtype=bool, count=len(items))

    def logits(self, items: np.ndarray) -> np.ndarray | None:
        user = self.state.user
        if user is None or self._failed:
            return None
        memo = self._rows_for
        if memo is None or memo[0] is not items:  # a new pool: stack its vectors once
            rows = [self.cache.get(int(i)) for i in items]
            if any(r is None for r in rows):
                return None
            memo = self._rows_for = (items, np.stack(rows) if rows else np.zeros((0, self.encoder.dim), np.float32))
        logits = (memo[1] @ user).astype(np.float64)
        return logits if np.isfinite(logits).all() else None

    @property
    def has_partition(self) -> bool:
        return self.encoder.has_partition

    def log_partition(self) -> np.ndarray | None:
        return None if self._failed else self.state.partition

    def request_fields(self) -> dict:
        missing = [i for i in self._recent if i in self._missing and i not in self.cache]
        return {"with_vectors": True, "missing_vectors": tuple(dict.fromkeys(missing))[-MAX_MISSING_VECTORS:]}

    def receive(self, vectors: ItemVectors | None) -> None:
        """Keep the cloud's vectors (checked first; VectorError leaves cache and state as they were, and so does an
        answer without vectors) and rebuild the state when a missing history item's vector has come."""
        if vectors is None:
            raise VectorError("vectors", None, "a catalogue-free device asked for item vectors; the answer has none")
        self.cache.put(vectors)  # an id's row never changes within a model version: the pool's rows stay valid
        found = self._missing.intersection(vectors.item_ids.tolist())
        if found or self.state.user is None:
            self._missing -= found
            rows = [r for r in (self.cache.get(i) for i in self._recent) if r is not None]
            if rows:
                try:
                    self.state.rebuild(np.stack(rows))
                    self._failed = False
                except LSC4RecError:
                    self._failed = True


def session_scorer(reranker, history: list[int], cache_capacity: int = 4096) -> SessionScorer:
    """The scorer for a model: a VectorScorer for a user encoder (or a ModelHolder of one), an IdScorer otherwise."""
    if isinstance(getattr(reranker, "current", reranker), UserEncoder):
        return VectorScorer(reranker, history, cache_capacity)
    return IdScorer(reranker, history)
