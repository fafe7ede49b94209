"""The item vector tables a server sends rows from: one per published user-encoder version, loaded on first use.

A catalogue-free device names its model version in every request (`device_model_version`); the server answers
with the rows of that version's table (shared.vector_table), so a device never receives vectors of another model.
Tables are verified against the manifest's `vector_table_sha256` when loaded and kept for the `keep` most recently
used versions (devices update gradually, so a few versions are live at once).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from cloud.registry import ModelRegistry
from shared.errors import InvalidArgumentError, LSC4RecError
from shared.vector_table import VectorTable


class VectorTables:
    """Version -> VectorTable, loaded from the registry on first use, the `keep` most recent kept in memory."""

    def __init__(self, registry: ModelRegistry, keep: int = 3):
        self.registry, self.keep = registry, keep
        self._tables: OrderedDict[str, VectorTable] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, version: str) -> VectorTable | None:
        """The table if it is in memory (no disk work: safe on the event loop)."""
        with self._lock:
            table = self._tables.get(version)
            if table is not None:
                self._tables.move_to_end(version)
            return table

    def load(self, version: str) -> VectorTable:
        """The table of a published user-encoder version; InvalidArgumentError naming device_model_version when
        there is none (or its file fails its check)."""
        table = self.cached(version)
        if table is not None:
            return table
        try:
            path, sha256 = self.registry.vector_table(version)
            table = VectorTable.load(path, version, sha256)
        except (LSC4RecError, OSError) as exc:
            raise InvalidArgumentError("device_model_version", version,
                                       f"no item vectors can be sent for it ({exc})") from None
        with self._lock:
            self._tables[version] = table
            while len(self._tables) > self.keep:
                self._tables.popitem(last=False)
        return table
