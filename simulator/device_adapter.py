"""Builds the real device.runtime.session.DeviceSession for each simulated user; a memoising reranker shared by all."""
from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm import tqdm

from device.runtime.fusion import FusionConfig
from device.runtime.policies import Policy
from device.runtime.session import DeviceSession, SessionConfig
from shared.errors import InvalidArgumentError
from shared.sequences import pad_left

MAX_REQUEST_HISTORY = 1024  # history a device sends (the server accepts up to ServerConfig.max_history = 1024)


class _Manifest:
    """The manifest fields a session reads, for stand-in models that have no manifest (they know every item)."""

    def __init__(self, num_items: int, version: str):
        self.num_items, self.version = num_items, version
        self.untrained_items: tuple[int, ...] = ()


class MemoReranker:
    """The device reranker behind a memo: scores of the whole catalogue per (model version, history).

    Sequence models here score each candidate independently of the others (SASRec / GRU4Rec: a dot
    product with the history state; DIN: attention per candidate), so a candidate's score does not
    depend on which list it sits in. `check` verifies that on real inputs before a replay relies on it.
    Swapping the model (re-training) changes `manifest.version`; sessions use it from their next event.
    """

    def __init__(self, reranker, num_items: int):
        self.num_items = num_items
        self.memo: dict = {}
        self.set_model(reranker)

    def set_model(self, reranker) -> None:
        self.inner = reranker
        manifest = getattr(reranker, "manifest", None)
        version = getattr(reranker, "version", None) or (manifest.version if manifest else "model")
        self.manifest = manifest if manifest is not None else _Manifest(self.num_items, version)
        self.version = self.manifest.version
        self.history_length = int(getattr(reranker, "history_length"))
        self._catalogue = np.arange(1, self.num_items + 1, dtype=np.int64)[None, :]

    def catalogue_scores(self, histories: np.ndarray) -> np.ndarray:
        """(B, N + 1) float32 scores of every item (column 0 unused) for left-padded histories (B, T)."""
        out = []
        for row in histories:
            key = (self.version, row.tobytes())
            hit = self.memo.get(key)
            if hit is None:
                scores = self.inner.score(row[None, :].copy(), self._catalogue.copy())[0]
                hit = self.memo[key] = np.concatenate([[np.float32(-np.inf)], scores.astype(np.float32)])
            out.append(hit)
        return np.stack(out)

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        histories, candidates = np.asarray(histories), np.asarray(candidates)  # (B, T), (B, C)
        if histories.shape[0] == 1:  # the session's call: one history
            hit = self.memo.get((self.version, histories[0].tobytes()))
            if hit is not None:
                return hit[candidates]
        table = self.catalogue_scores(histories)
        return np.take_along_axis(table, candidates, axis=1)

    @property
    def has_partition(self) -> bool:
        return bool(getattr(self.inner, "has_partition", False))

    def log_partition(self, history: np.ndarray) -> np.ndarray | None:
        """The model's partition-head prediction for one left-padded history, memoised (user encoders with a head)."""
        key = ("partition", self.version, np.asarray(history).tobytes())
        if key not in self.memo:
            inner = getattr(self.inner, "log_partition", None)
            self.memo[key] = None if inner is None else inner(history)
        return self.memo[key]

    def warm(self, histories: list[np.ndarray], batch: int = 64, progress: bool = False) -> None:
        """Fill the memo for many histories with batched calls."""
        padded = pad_left(histories, self.history_length)
        todo = list({row.tobytes(): row for row in padded if (self.version, row.tobytes()) not in self.memo}.values())
        for start in tqdm(range(0, len(todo), batch), desc="SRM scores", unit="batch", disable=not progress):
            rows = np.stack(todo[start:start + batch])
            scores = self.inner.score(rows, np.broadcast_to(self._catalogue, (len(rows), self.num_items)).copy())
            for row, s in zip(rows, scores):
                self.memo[(self.version, row.tobytes())] = np.concatenate([[np.float32(-np.inf)], s.astype(np.float32)])

    def check(self, histories: list[np.ndarray], lists: list[np.ndarray], atol: float = 1e-4) -> float:
        """Largest |memo score - direct score of the list|; raises if candidates are not scored independently."""
        padded = pad_left(histories, self.history_length)
        worst = 0.0
        for row, items in zip(padded, lists):
            direct = self.inner.score(row[None, :].copy(), np.asarray(items, dtype=np.int64)[None, :].copy())[0]
            worst = max(worst, float(np.max(np.abs(direct - self.score(row[None, :], items[None, :])[0]))))
        if worst > atol:
            raise InvalidArgumentError("srm", worst, f"scores depend on the other candidates (> {atol}); "
                                                     "the simulator's score memo cannot be used with this model")
        return worst


def fusion_config(fusion: str, alpha: float, srm_norm: str, llm_norm: str = "rank") -> FusionConfig:
    """The device's FusionConfig for one of the grid's fusions ("llm", "srm" or "fusion" with the config's weights).

    "fusion" at alpha 0.5 with the rank and prob norms is the reference rule (LSC4Rec's), which is what runs then.
    """
    if fusion in ("llm", "srm"):
        return FusionConfig(rule=fusion)
    if alpha == 0.5 and srm_norm == "prob" and llm_norm == "rank":
        return FusionConfig(rule="reference")
    return FusionConfig(rule="linear", alpha=alpha, llm_norm=llm_norm, srm_norm=srm_norm)


def make_session(user: int, past: np.ndarray, initial, reranker: MemoReranker, policy: Policy, fusion: FusionConfig,
                 slate_size: int, num_candidates: int, now_ms: Callable[[], float],
                 measure: str = "lsc4rec") -> DeviceSession:
    """One user's DeviceSession in driven mode (no source: the simulator answers its requests)."""
    config = SessionConfig(user_id=str(int(user)), slate_size=slate_size, num_candidates=num_candidates,
                           fusion=fusion, backoff_initial_ms=1000.0, backoff_max_ms=60000.0,
                           max_request_history=MAX_REQUEST_HISTORY, measure=measure, overlap_k=slate_size)
    return DeviceSession(config, reranker, policy, now_ms, source=None, history=tuple(int(i) for i in past),
                         candidates=initial)
