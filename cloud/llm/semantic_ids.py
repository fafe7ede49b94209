"""Item tokenizer: item text -> MiniLM embedding -> residual k-means code (or one atomic token per item)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cloud.text.encoders import TextEncoder, resolve_encoder, shard_vectors
from cloud.text.vectors import apply_whitening
from shared.config import check
from shared.data.dataset import vocab_hash
from shared.errors import CatalogMismatchError, EmptyDatasetError, ManifestError
from shared.records import Item

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
INDEX_NAME = "item_index.json"
EMBEDDINGS_NAME = "item_embeddings.npy"
INDEX_VERSION = 1


@dataclass(frozen=True)
class TokenizerConfig:
    """How items become token sequences."""

    kind: str = "atomic"  # "atomic" (one token per item) or "semantic" (residual k-means codes)
    levels: int = 3  # semantic: residual k-means levels before the disambiguation level
    codebook_size: int = 32  # semantic: codes per level
    kmeans_iters: int = 25
    seed: int = 0

    def __post_init__(self):
        check(self.kind in ("atomic", "semantic"), "tokenizer.kind", self.kind, "must be atomic or semantic")
        check(self.levels >= 1, "tokenizer.levels", self.levels, "must be at least 1")
        check(self.codebook_size >= 2, "tokenizer.codebook_size", self.codebook_size, "must be at least 2")
        check(self.kmeans_iters >= 1, "tokenizer.kmeans_iters", self.kmeans_iters, "must be at least 1")


class ItemIndex:
    """Bijection item id (1..N) <-> token path, plus the prefix trie used by constrained decoding.

    `codes` is (N, D) int64 of *vocabulary* token ids: level l's tokens live in
    [offsets[l], offsets[l] + sizes[l]). Row i - 1 is item i.
    """

    def __init__(self, codes: np.ndarray, sizes: Sequence[int], kind: str, catalog_hash: str):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise EmptyDatasetError("the item index needs at least one item")
        self.codes, self.kind, self.catalog_hash = codes, kind, catalog_hash
        self.sizes = tuple(int(s) for s in sizes)
        self.offsets = tuple(int(NUM_SPECIAL + sum(self.sizes[:l])) for l in range(len(self.sizes)))
        self.vocab_size = NUM_SPECIAL + sum(self.sizes)
        if len({tuple(r) for r in codes.tolist()}) != len(codes):
            raise ManifestError("item index: two items share a code")
        self._build_trie()

    @property
    def num_items(self) -> int:
        return len(self.codes)

    @property
    def depth(self) -> int:
        return self.codes.shape[1]

    def _build_trie(self) -> None:
        """node[l] (N,): trie node of each item's length-l prefix; child[l] (nodes_l, K_l) -> next node or item."""
        n, depth = self.codes.shape
        local = self.codes - np.asarray(self.offsets)[None, :]  # (N, D) code within its level
        self.node = [np.zeros(n, dtype=np.int64)]
        self.child = []
        for level in range(depth):
            parents = self.node[level]
            keys = parents * self.sizes[level] + local[:, level]
            uniq, inverse = np.unique(keys, return_inverse=True)
            child = np.full((int(parents.max()) + 1, self.sizes[level]), -1, dtype=np.int64)
            if level == depth - 1:
                child[parents, local[:, level]] = np.arange(1, n + 1)  # leaves hold item ids
            else:
                child[uniq // self.sizes[level], uniq % self.sizes[level]] = np.arange(len(uniq))
                self.node.append(inverse.astype(np.int64))
            self.child.append(child)
        # leaves[l][node]: number of items under each node of level l
        self.leaves = [np.bincount(self.node[l], minlength=self.child[l].shape[0]) for l in range(depth)]

    def tokens(self, items: Sequence[int]) -> np.ndarray:
        """(len(items) * D,) token ids of the items, in order."""
        items = np.asarray(items, dtype=np.int64)
        return self.codes[items - 1].reshape(-1)

    def check_catalog(self, items: Sequence[Item], what: str = "item index") -> None:
        actual = vocab_hash(items)
        if actual != self.catalog_hash or len(items) != self.num_items:
            raise CatalogMismatchError(what, actual, self.catalog_hash)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / INDEX_NAME
        data = {"version": INDEX_VERSION, "kind": self.kind, "vocab_hash": self.catalog_hash,
                "num_items": self.num_items, "sizes": list(self.sizes), "codes": self.codes.tolist()}
        path.write_text(json.dumps(data))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ItemIndex":
        path = Path(folder) / INDEX_NAME
        if not path.is_file():
            raise ManifestError(f"{path}: missing item index")
        data = json.loads(path.read_text())
        if data.get("version") != INDEX_VERSION:
            raise ManifestError(f"{path}: index version {data.get('version')!r}, expected {INDEX_VERSION}")
        return cls(np.asarray(data["codes"], dtype=np.int64), data["sizes"], data["kind"], data["vocab_hash"])


def atomic_index(items: Sequence[Item]) -> ItemIndex:
    """One token per item: item i is token NUM_SPECIAL + i - 1."""
    n = len(items)
    if n == 0:
        raise EmptyDatasetError("the catalogue is empty")
    codes = (NUM_SPECIAL + np.arange(n, dtype=np.int64))[:, None]
    return ItemIndex(codes, [n], "atomic", vocab_hash(items))


def kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means with k-means++ seeding; returns (centroids (k, d), assignment (n,))."""
    n = len(x)
    k = min(k, n)
    centroids = [x[rng.integers(n)]]
    dist = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else np.full(n, 1.0 / n)
        centroids.append(x[rng.choice(n, p=probs)])
        dist = np.minimum(dist, ((x - centroids[-1]) ** 2).sum(1))
    c = np.stack(centroids)  # (k, d)
    for _ in range(iters):
        assign = _nearest(x, c)  # (n,)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c, _nearest(x, c)


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid per row, without materialising (n, k, d)."""
    return ((c ** 2).sum(1)[None, :] - 2.0 * x @ c.T).argmin(1)


def semantic_index(items: Sequence[Item], embeddings: np.ndarray, config: TokenizerConfig) -> ItemIndex:
    """Residual k-means codes over `embeddings` (N, d) + a final level that makes each code unique."""
    n = len(items)
    if n == 0:
        raise EmptyDatasetError("the catalogue is empty")
    x = np.asarray(embeddings, dtype=np.float64)
    if x.shape[0] != n:
        raise ManifestError(f"{x.shape[0]} embeddings for {n} items")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(config.seed)
    local = np.zeros((n, config.levels + 1), dtype=np.int64)
    residual = x.copy()
    for level in range(config.levels):
        centroids, assign = kmeans(residual, config.codebook_size, config.kmeans_iters, rng)
        local[:, level] = assign
        residual = residual - centroids[assign]
    # Disambiguation: items sharing all cluster codes get 0, 1, 2, ... in id order.
    _, group = np.unique(local[:, : config.levels], axis=0, return_inverse=True)
    group = group.reshape(-1)
    seen: dict[int, int] = {}
    for i, g in enumerate(group.tolist()):
        local[i, -1] = seen.get(g, 0)
        seen[g] = local[i, -1] + 1
    sizes = [config.codebook_size] * config.levels + [int(local[:, -1].max()) + 1]
    offsets = NUM_SPECIAL + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return ItemIndex(local + offsets[None, :], sizes, "semantic", vocab_hash(items))


def embed_texts(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """(len(texts), 384) float32 mean-pooled, L2-normalised MiniLM sentence embeddings."""
    model = TextEncoder(resolve_encoder("minilm"), "mean")
    return apply_whitening(shard_vectors(model, texts, batch_size), None, None)


def item_embeddings(items: Sequence[Item], cache_dir: str | Path | None = None) -> np.ndarray:
    """MiniLM embeddings of each item's text, cached as item_embeddings.npy (+ vocab hash) in cache_dir."""
    cache = Path(cache_dir) / EMBEDDINGS_NAME if cache_dir else None
    tag = cache.with_suffix(".hash") if cache else None
    if cache and cache.is_file() and tag.is_file() and tag.read_text() == vocab_hash(items):
        return np.load(cache)
    emb = embed_texts([item.text for item in items])
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
        tag.write_text(vocab_hash(items))
    return emb


def build_index(items: Sequence[Item], config: TokenizerConfig, embeddings: np.ndarray | None = None,
                cache_dir: str | Path | None = None) -> ItemIndex:
    """The index a model is trained with; semantic ids embed item texts unless `embeddings` are given."""
    if config.kind == "atomic":
        return atomic_index(items)
    if embeddings is None:
        embeddings = item_embeddings(items, cache_dir)
    return semantic_index(items, embeddings, config)
