"""Fixed-length history tensors: left-padded with 0, truncated from the old end (numpy only)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
