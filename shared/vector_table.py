"""The SRM's item table outside the device: int8 rows with one scale each, kept by the cloud, sent with lists.

A catalogue-free device model (manifest kind "user-encoder") holds no item table: it turns the vectors of the
user's history into a user vector and scores any candidate whose vector it is given. The table those vectors
come from is written beside the artifact at export (`VECTOR_TABLE_NAME`), published with it, and identified by
the manifest's `vector_table_sha256`; `ItemVectors` is one answer's worth of rows, tagged with the model version.

Quantisation: row v becomes round(v / s) in int8 with s = max|v| / 127 (s = 1 for a zero row), so each
component is off by at most s / 2. About d + 6 bytes per item on the wire (d = 64: 50 candidates in ~3.6 KB).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import InvalidArgumentError
from shared.files import write_atomic
from shared.manifest import sha256_file

VECTOR_TABLE_NAME = "item_vectors.npz"
INT8_MAX = 127


class VectorError(InvalidArgumentError):
    """Item vectors that do not fit the model: another version or dimension, a wrong count, non-finite values."""


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float -> (n, d) int8 values and (n,) float32 scales, vector k ~ scales[k] * values[k]."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), dtype=np.float32)
    scales = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    values = np.clip(np.rint(vectors / scales[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return values, scales


def dequantise(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(n, d) int8 and (n,) scales -> (n, d) float32."""
    return values.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


@dataclass(frozen=True, eq=False)
class ItemVectors:
    """Rows of one model version's table: item_ids (n,) int64, values (n, dim) int8, scales (n,) float32."""

    model_version: str
    dim: int
    item_ids: np.ndarray
    values: np.ndarray
    scales: np.ndarray

    def check(self, model_version: str, dim: int, max_count: int | None = None) -> "ItemVectors":
        """Refuse rows for another version or dimension, a count that does not match, bad scales or ids; returns
        self. Raises VectorError naming the field."""
        if self.model_version != model_version:
            raise VectorError("vectors.model_version", self.model_version, f"the device runs {model_version!r}")
        if self.dim != dim:
            raise VectorError("vectors.dim", self.dim, f"the device model's vectors have {dim} dimensions")
        n = len(self.item_ids)
        if self.values.shape != (n, dim) or self.scales.shape != (n,):
            raise VectorError("vectors.values", f"<{self.values.size} values, {self.scales.size} scales>",
                              f"must be {n} rows of {dim} values and {n} scales for {n} item ids")
        if max_count is not None and n > max_count:
            raise VectorError("vectors.item_ids", f"<{n} ids>", f"more than the {max_count} asked for")
        if n and (not np.isfinite(self.scales).all() or (self.scales <= 0).any()):
            raise VectorError("vectors.scales", self.scales[~(np.isfinite(self.scales) & (self.scales > 0))][:3].tolist(),
                              "must be positive and finite")
        ids = self.item_ids.tolist()
        if n and (min(ids) < 1 or len(set(ids)) != n):
            raise VectorError("vectors.item_ids", self.item_ids[:5].tolist(), "must be distinct ids >= 1")
        return self

    def floats(self) -> np.ndarray:
        return dequantise(self.values, self.scales)


class VectorTable:
    """The cloud's copy of one model version's item table: row i = item i (row 0 = padding, all zero)."""

    def __init__(self, values: np.ndarray, scales: np.ndarray, vocab_hash: str, model_version: str = ""):
        if values.ndim != 2 or values.dtype != np.int8 or scales.shape != (len(values),):
            raise VectorError("vector table", f"{values.dtype} {values.shape}", "must be int8 (N + 1, d) with N + 1 scales")
        self.values, self.scales, self.vocab_hash, self.model_version = values, scales, vocab_hash, model_version

    @classmethod
    def from_floats(cls, table: np.ndarray, vocab_hash: str) -> "VectorTable":
        """From the model's float table (N + 1, d), row 0 = padding."""
        values, scales = quantise(table)
        return cls(values, scales, vocab_hash)

    @property
    def num_items(self) -> int:
        return len(self.values) - 1

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def lookup(self, item_ids) -> ItemVectors:
        """The rows of the given ids that the table has, each id once (ids beyond it, i.e. items added later, are left
        out)."""
        ids = np.asarray(list(dict.fromkeys(int(i) for i in item_ids)), dtype=np.int64)
        ids = ids[(ids >= 1) & (ids <= self.num_items)]
        return ItemVectors(self.model_version, self.dim, ids, self.values[ids], self.scales[ids])

    def save(self, path: str | Path) -> str:
        """Write the .npz atomically; returns its sha256 (the manifest's vector_table_sha256)."""
        return write_atomic(path, lambda handle: np.savez(handle, values=self.values, scales=self.scales,
                                                          meta=np.array(json.dumps({"vocab_hash": self.vocab_hash}))))

    @classmethod
    def load(cls, path: str | Path, model_version: str, sha256: str | None = None) -> "VectorTable":
        """Read a table written by `save`; with `sha256`, refuse a file whose bytes differ (VectorError)."""
        path = Path(path)
        if sha256 is not None and sha256_file(path) != sha256:
            raise VectorError(str(path), "sha256", f"does not match the manifest's vector_table_sha256 {sha256[:12]}…")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(data["values"], data["scales"], meta["vocab_hash"], model_version)
