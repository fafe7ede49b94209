"""`--backend ray`: shard users across Ray workers; results equal the local backend's for the same seed.

Users are independent in a replay without re-training (each device talks only to the cloud, whose
answers depend only on the history sent), and every seeded draw is keyed by (seed, user, step), so
running shards separately and concatenating their rows gives the same figures. Ray is an optional
extra (`pip install lsc4rec[ray]`); nothing else imports it.
"""
from __future__ import annotations

import numpy as np

from device.runtime.policies import PolicySpec
from shared.config import from_dict, to_dict
from shared.ray_backend import start_ray
from simulator.config import SimConfig
from simulator.engine import ROW_FIELDS, RunResult
from simulator.experiments import load_world, make_replay
from simulator.figures import summarize


def _shard_rows(config_dict: dict, run: dict, policy: PolicySpec, user_index: list[int]) -> dict:
    """Worker side: load the world (cached per process), replay one shard of users, return its rows."""
    global _WORLD
    key = repr(sorted(config_dict.items()))
    if "_WORLD" not in globals() or _WORLD[0] != key:
        _WORLD = (key, load_world(from_dict(SimConfig, {**config_dict, "backend": "local"})))
    world = _WORLD[1]
    world.scorer.set_model(world.reranker)
    shard = world.streams.subset(np.asarray(user_index))
    replay = make_replay(world, shard, seed=run["seed"], progress=False)
    return replay.run(policy, run["fusion"], run["seed"]).rows


def run_sharded(world, config, run: dict, policy: PolicySpec) -> RunResult:
    """Split the users into `ray_workers` shards, replay them on Ray, merge rows in global time order."""
    ray = start_ray(config.ray_address)
    remote = ray.remote(_shard_rows)
    shards = [list(map(int, s)) for s in np.array_split(np.arange(len(world.streams.users)), config.ray_workers)]
    cfg = to_dict(config)
    parts = ray.get([remote.remote(cfg, run, policy, s) for s in shards if s])
    rows = {f: np.concatenate([p[f] for p in parts]) for f in ROW_FIELDS}
    order = np.lexsort((rows["step"], rows["user"], rows["ts"]))  # the local backend's global order
    rows = {f: v[order] for f, v in rows.items()}
    result = RunResult({"policy": policy.name, "label": policy.build().label(), "fusion": run["fusion"],
                        "seed": run["seed"]}, rows)
    result.summary = summarize(rows, config.slate_size)
    result.summary["model_updates"] = []
    return result
