"""One vector per item text: an encoder's prompt-based last-token (or mean-pooled) state, cached, then whitened."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from tqdm import tqdm

from cloud.text.encoders import Encoder, TextEncoder, shard_vectors
from cloud.text.ray_backend import run_ray
from shared.errors import InvalidArgumentError
from shared.ray_backend import start_ray
from shared.wheels import cache_root

POOLINGS = ("last", "mean")
MOVIE_PROMPT = 'This movie : "{text}" means in one word:"'
ITEM_PROMPT = 'This item : "{text}" means in one word:"'
SHARD_ITEMS = 256  # texts per cache shard: an interrupted run loses at most this much work


def default_prompt(pooling: str, source: str = "") -> str:
    """The prompt of a pooling: last-token pooling asks for a one-word summary; mean pooling reads the bare text."""
    if pooling == "mean":
        return "{text}"
    return MOVIE_PROMPT if "movielens" in source.lower() else ITEM_PROMPT


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class VectorCache:
    """fp16 vectors by text sha256, under a folder keyed by the encoder's weights, pooling and prompt.

    Each write is one new shard file (written whole, then renamed), so a run that stops loses only the
    shard in progress and a second run pays nothing for what the first computed.
    """

    def __init__(self, encoder: Encoder, pooling: str, prompt: str, root: Path | None = None):
        ident = {"weights_sha256": encoder.weights_sha256, "pooling": pooling, "prompt": prompt}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = Path(root or cache_root() / "item-vectors") / key
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "key.json").write_text(json.dumps({**ident, "encoder": encoder.name}, indent=2) + "\n")
        self._known: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as data:
                self._known.update(zip(data["keys"].tolist(), data["vectors"]))

    def get(self, key: str) -> np.ndarray | None:
        return self._known.get(key)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float16)
        name = f"shard-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:16]}.npz"
        tmp = self.folder / f".{name}.part"
        with open(tmp, "wb") as handle:
            np.savez(handle, keys=np.asarray(keys), vectors=vectors)
        tmp.replace(self.folder / name)
        self._known.update(zip(keys, vectors))


BACKENDS = ("local", "ray")


def encode(texts: Sequence[str], encoder: Encoder, pooling: str, prompt: str, batch_size: int = 16,
           progress: bool = True, backend: str = "local", ray_address: str = "") -> np.ndarray:
    """(N, d) float32 raw vectors of `texts`; cached ones are read, the rest computed shard by shard.

    backend "ray" sends the shards to Ray workers (`ray_address`, else a local one-node cluster); a shard is the
    same texts in the same batches on either backend, so the vectors are the same.
    """
    if pooling not in POOLINGS:
        raise InvalidArgumentError("--pooling", pooling, f"must be one of {', '.join(POOLINGS)}")
    if "{text}" not in prompt:
        raise InvalidArgumentError("--prompt", prompt, "must contain {text}")
    if backend not in BACKENDS:
        raise InvalidArgumentError("--backend", backend, f"must be one of {', '.join(BACKENDS)}")
    cache = VectorCache(encoder, pooling, prompt)
    keys = [text_key(prompt.format(text=t)) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if cache.get(k) is None}.items(),
                     key=lambda kt: len(kt[1]))  # similar lengths per batch: less padding
    shards = [missing[s:s + SHARD_ITEMS] for s in range(0, len(missing), SHARD_ITEMS)]
    jobs = [([k for k, _ in shard], [prompt.format(text=t) for _, t in shard]) for shard in shards]
    if jobs:
        if backend == "ray":
            start_ray(ray_address, flag="--backend")  # a missing extra or cluster fails here, before any work
        bar = tqdm(total=len(missing), desc=f"embed items ({encoder.name}, {pooling}, {backend})", unit=" items",
                   file=sys.stderr, disable=not progress)
        run = run_ray if backend == "ray" else _run_local
        for shard_keys, vectors in run(jobs, encoder, pooling, batch_size, ray_address):
            cache.put(shard_keys, vectors)  # each finished shard is kept, whatever happens to the rest
            bar.update(len(shard_keys))
        bar.close()
    return np.stack([cache.get(k) for k in keys]).astype(np.float32)


def _run_local(jobs, encoder: Encoder, pooling: str, batch_size: int, address: str):
    model = TextEncoder(encoder, pooling)
    for keys, prompts in jobs:
        yield keys, shard_vectors(model, prompts, batch_size)


def whitening(raw: np.ndarray, dim: int = 0, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), W (d, k)) with k = dim or all: (x - mean) @ W has identity covariance (BERT-whitening)."""
    mean = raw.mean(0)
    u, s, _ = np.linalg.svd(np.cov((raw - mean).T.astype(np.float64)))
    k = dim or len(s)
    return mean.astype(np.float32), (u[:, :k] / np.sqrt(s[:k] + eps)).astype(np.float32)


def apply_whitening(raw: np.ndarray, mean: np.ndarray | None, w: np.ndarray | None) -> np.ndarray:
    """Whitened (when given) and L2-normalised rows: what the generator and the text baseline read."""
    x = raw if mean is None else (raw - mean) @ w
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
