"""The catalogue-free device model: item vectors in, the user vector out, updated one event at a time (no torch).

An artifact of manifest kind "user-encoder" is one graph (ONNX, or an ExecuTorch .pte) of one of three shapes (told
by its input names):

- recurrent (GRU4Rec): `state` (layers, 1, H) and `item_vector` (1, d) -> `next_state`, `user` (1, d). A new event
  is one step from the previous state (the model's own recurrence: no window, nothing to slide). The first state is
  the one after a window of padding (zero vectors), where every training history starts.
- cached (SASRec with rotary positions): `item_vector`, `position`, each block's `past_keys` / `past_values`
  (layers, H, T - 1, d/H) and `past_mask` -> `user`, the new item's `keys` / `values`. A new event computes only
  the newest position; the device keeps the keys and values of the last T - 1 items (exact: the model lets an item
  see at most T - 1 items before it, device.training.models.sasrec).
- window (SASRec with learned positions): `history_vectors` (1, T, d), zero rows = padding -> `user` (1, d). A new
  event shifts the window by one vector and re-encodes it (right-aligned positions change every cached key).

A candidate's score is the dot product of its vector with the user vector (the model's own scoring; its history
bias only concerns consumed items, which a device never shows).

`UserEncoder` is what a session sees of any runtime: `new_state()` gives one user's state, with `append(vector)`
per event, `rebuild(vectors)` to start again from the vectors of the recent history (after vectors that were
missing have arrived), `user` and `partition`. `OnnxUserEncoder` runs the graph with onnxruntime, the shapes'
logic in Python (`GraphEncoder`, `UserState`); device/runtime/native_backend.py's `NativeUserEncoder` runs a .pte
with the state kept in C++ (device/native, the same semantics).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from device.runtime.backend import ort_session
from shared.errors import LSC4RecError, ManifestError
from shared.records import ModelManifest

SHAPES = {("state", "item_vector"): "recurrent", ("history_vectors",): "window",
          ("item_vector", "position", "past_keys", "past_values", "past_mask"): "cached"}
# The optional last output: [log Z, log T] of the partition head (the "est-regret" measure's input).
PARTITION_OUTPUT = "log_partition"
# A cached state re-encodes its window when positions reach this (float32 angles stay precise below it).
POSITION_LIMIT = 1 << 14


class UserEncoder:
    """A loaded "user-encoder" artifact, whichever runtime runs it (module docstring): `new_state()` per user;
    `dim`, `history_length`, `shape`, `has_partition` and `manifest` describe it."""

    runtime_name = "runtime"

    def __init__(self, path: str | Path, manifest: ModelManifest):
        if manifest.kind != "user-encoder":
            raise ManifestError(f"{path}: manifest kind {manifest.kind!r} is not a user-encoder")
        names = tuple(spec.name for spec in manifest.inputs)
        if names not in SHAPES:
            raise ManifestError(f"{path}: inputs {names} are none of the user-encoder shapes "
                                f"{', '.join(map(str, SHAPES))}")
        self.manifest, self.dim, self.history_length = manifest, manifest.vector_dim, manifest.history_length
        self.shape = SHAPES[names]
        self.has_partition = manifest.outputs[-1].name == PARTITION_OUTPUT

    @property
    def recurrent(self) -> bool:
        return self.shape == "recurrent"

    def new_state(self):
        """One user's state (`append`, `rebuild`, `user`, `partition`), before any item."""
        raise NotImplementedError

    def encode(self, vectors: np.ndarray):
        """(state, user vector (d,), [log Z, log T] or None) after `vectors` (n, d), oldest first (the last
        history_length are used); user None for no vectors."""
        state = self.new_state()
        state.rebuild(vectors)
        return state, state.user, state.partition


class GraphEncoder(UserEncoder):
    """The shapes' logic in Python around one graph call per step; a subclass supplies `_run(feeds) -> outputs`
    (the manifest's inputs by name -> its outputs in order). States are never modified in place."""

    def __init__(self, path: str | Path, manifest: ModelManifest):
        super().__init__(path, manifest)
        self._state_shape = tuple(manifest.inputs[0].shape) if self.recurrent else None
        self._cache_shape = tuple(manifest.inputs[2].shape) if self.shape == "cached" else None
        self._start = None  # recurrent: the state after a window of padding (made at first use)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def new_state(self) -> "UserState":
        return UserState(self)

    def initial(self):
        """The state before any item: an array (recurrent, window) or [keys, values, mask, next position]."""
        if self.recurrent:
            if self._start is None:  # the state after a full window of padding (zero vectors), as training begins
                start, zero = np.zeros(self._state_shape, dtype=np.float32), np.zeros(self.dim, dtype=np.float32)
                for _ in range(self.history_length):
                    start = self._step(start, zero)[0]
                self._start = start
            return self._start.copy()
        if self.shape == "cached":
            return [np.zeros(self._cache_shape, dtype=np.float32), np.zeros(self._cache_shape, dtype=np.float32),
                    np.zeros(self._cache_shape[2], dtype=bool), 0]
        return np.zeros((1, self.history_length, self.dim), dtype=np.float32)

    def step(self, state, vector: np.ndarray):
        """(state, the new item's vector (d,)) -> (next state, user (d,), [log Z, log T] or None); raises
        LSC4RecError if the graph fails."""
        return self._step(state, vector)

    def _step(self, state, vector: np.ndarray):
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        try:
            if self.recurrent:
                nxt, user, *partition = self._run({"state": state, "item_vector": vector})
                return nxt, user[0], self._partition(partition)
            if self.shape == "cached":
                keys, values, mask, position = state
                user, k, v, *partition = self._run({
                    "item_vector": vector, "position": np.array([position], dtype=np.int64), "past_keys": keys,
                    "past_values": values, "past_mask": mask})
                keys, values, mask = keys.copy(), values.copy(), mask.copy()
                for cache, new in ((keys, k), (values, v)):  # drop the oldest slot, append the new item
                    cache[:, :, :-1] = cache[:, :, 1:]
                    cache[:, :, -1] = new[:, :, 0]
                mask[:-1] = mask[1:]
                mask[-1] = True
                return [keys, values, mask, position + 1], user[0], self._partition(partition)
            nxt = np.empty_like(state)
            nxt[0, :-1] = state[0, 1:]
            nxt[0, -1] = vector
            user, *partition = self._run({"history_vectors": nxt})
            return nxt, user[0], self._partition(partition)
        except Exception as exc:  # the runtime's own error types
            raise LSC4RecError(f"user encoder failed: {exc}") from None

    @staticmethod
    def _partition(outputs: list) -> np.ndarray | None:
        return outputs[0][0].astype(np.float64) if outputs else None

    def encode(self, vectors: np.ndarray):
        vectors = np.asarray(vectors, dtype=np.float32)[-self.history_length:]
        state, user, partition = self.initial(), None, None
        if self.shape == "window" and len(vectors):
            state[0, self.history_length - len(vectors):] = vectors
            try:
                user, *rest = self._run({"history_vectors": state})
            except Exception as exc:
                raise LSC4RecError(f"user encoder failed: {exc}") from None
            return state, user[0], self._partition(rest)
        for vector in vectors:
            state, user, partition = self._step(state, vector)
        return state, user, partition


class OnnxUserEncoder(GraphEncoder):
    """An encoder.onnx run by onnxruntime (CPU, sequential, `threads` intra-op threads)."""

    runtime_name = "onnxruntime"

    def __init__(self, path: str | Path, manifest: ModelManifest, threads: int = 1):
        super().__init__(path, manifest)
        try:
            self._session = ort_session(path, threads)
        except ImportError:
            raise
        except Exception as exc:  # onnxruntime's own error types for a broken graph
            raise ManifestError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        graph = tuple(arg.name for arg in self._session.get_inputs())
        names = tuple(spec.name for spec in manifest.inputs)
        if graph != names:
            raise ManifestError(f"{path}: graph inputs {graph}, manifest declares {names}")

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)


class UserState:
    """One user's state of a GraphEncoder: `append(vector)` per event, `user` (d,) or None before the first item."""

    def __init__(self, encoder: GraphEncoder):
        self.encoder = encoder
        self._state, self.user, self.partition = encoder.initial(), None, None
        self._window: list[np.ndarray] = []

    def append(self, vector: np.ndarray) -> np.ndarray:
        encoder = self.encoder
        if encoder.shape == "cached":  # the window's vectors, to start positions again before float32 blurs them
            self._window = (self._window + [vector])[-encoder.history_length:]
            if self._state[3] >= POSITION_LIMIT:
                return self.rebuild(np.stack(self._window))
        self._state, self.user, self.partition = encoder.step(self._state, vector)
        return self.user

    def rebuild(self, vectors: np.ndarray) -> np.ndarray | None:
        self._state, self.user, self.partition = self.encoder.encode(vectors)
        self._window = list(np.asarray(vectors, dtype=np.float32)[-self.encoder.history_length:])
        return self.user
