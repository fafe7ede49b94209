"""A catalogue-free device's bounded cache of item vectors (no torch).

The device holds no item table. The cloud sends each candidate's vector with a list, and the vectors of history
items the device names as missing (shared.vector_table.ItemVectors, int8 + scale, tagged with the model version).
The cache keeps them, dequantised, for the items of the recent history and of the cached lists, and forgets the
least recently used beyond its bound: its memory is `capacity * dim * 4` bytes whatever the catalogue's size.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import numpy as np

from shared.config import check
from shared.vector_table import ItemVectors, VectorError


class VectorCache:
    """Item id -> float32 vector, least recently used evicted beyond `capacity` items."""

    def __init__(self, dim: int, model_version: str, capacity: int = 4096):
        check(dim >= 1, "dim", dim, "must be >= 1")
        check(capacity >= 1, "capacity", capacity, "must be >= 1")
        self.dim, self.model_version, self.capacity = dim, model_version, capacity
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, item: int) -> bool:
        return item in self._rows

    @property
    def nbytes(self) -> int:
        return len(self._rows) * self.dim * 4

    def put(self, vectors: ItemVectors) -> np.ndarray:
        """Check the rows against the device's model (VectorError for another version or dimension, a bad count,
        non-finite values, more rows than the cache holds) and keep them; returns their float32 rows (n, dim).
        Nothing is kept when a check fails."""
        vectors.check(self.model_version, self.dim, max_count=self.capacity)
        rows = vectors.floats()
        if not np.isfinite(rows).all():
            raise VectorError("vectors.values", "non-finite", "every dequantised value must be finite")
        for item, row in zip(vectors.item_ids.tolist(), rows):
            self._rows[item] = row
            self._rows.move_to_end(item)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return rows

    def get(self, item: int) -> np.ndarray | None:
        row = self._rows.get(item)
        if row is not None:
            self._rows.move_to_end(item)
        return row

    def missing(self, items: Iterable[int]) -> list[int]:
        """The distinct ids among `items` that the cache lacks, in first-seen order."""
        out, seen = [], set()
        for item in items:
            if item not in self._rows and item not in seen:
                seen.add(item)
                out.append(item)
        return out
