"""Fixed-length history tensors (left-padded with 0, truncated from the old end) and id checks; numpy only."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import UnknownItemError


def pad_left(histories: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """(B, length) int64: each history's most recent `length` items, right-aligned, 0 before them.

    Histories longer than `length` lose their oldest items (documented behaviour of every model).
    """
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64)[-length:] if length else np.zeros(0, dtype=np.int64)
        if recent.size:
            out[row, length - recent.size:] = recent
    return out


def check_ids(name: str, ids: np.ndarray, num_items: int, allow_padding: bool) -> None:
    """Raise UnknownItemError for the first id outside the vocabulary (before any inference)."""
    low = 0 if allow_padding else 1
    if ids.size == 0 or (ids.min() >= low and ids.max() <= num_items):  # the common case: two reductions
        return
    bad = np.argwhere((ids < low) | (ids > num_items))
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise UnknownItemError(f"{name}{list(where)}", int(ids[where]),
                               f"not an item id (catalogue is 1..{num_items})")
