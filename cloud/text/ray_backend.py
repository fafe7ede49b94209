"""`embed items --backend ray`: shards of texts on Ray workers (Ray is an optional extra; only this module uses it)."""
from __future__ import annotations

import numpy as np

from cloud.text.encoders import Encoder, TextEncoder, shard_vectors


def _shard(encoder: Encoder, pooling: str, prompts: list[str], batch_size: int) -> np.ndarray:
    """Worker side: the encoder is loaded once per worker process and kept for its next shards."""
    global _WORKER_MODEL
    if "_WORKER_MODEL" not in globals() or _WORKER_MODEL[0] != (encoder, pooling):
        _WORKER_MODEL = ((encoder, pooling), TextEncoder(encoder, pooling, threads=1))
    return shard_vectors(_WORKER_MODEL[1], prompts, batch_size)


def run_ray(jobs, encoder: Encoder, pooling: str, batch_size: int, address: str):
    """Yield (keys, vectors) per shard as the workers finish them (one CPU each; the cluster is already started)."""
    import ray

    task = ray.remote(num_cpus=1)(_shard)
    pending = {task.remote(encoder, pooling, prompts, batch_size): keys for keys, prompts in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(done[0]), ray.get(done[0])
