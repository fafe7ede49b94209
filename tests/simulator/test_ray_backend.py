"""`--backend ray` shards users; with a stand-in for Ray (same API, runs in-process) results equal local."""
from __future__ import annotations

import sys
import types

import pytest


from simulator.config import load_sim_config
from simulator.run import simulate
from tests.simulator.conftest import small_overrides


def _fake_ray() -> types.ModuleType:
    ray = types.ModuleType("ray")
    ray.calls = []

    class _Remote:
        def __init__(self, fn):
            self.fn = fn

        def remote(self, *args):
            ray.calls.append(args[-1])
            return self.fn(*args)

    ray.remote = _Remote
    ray.get = lambda refs: list(refs)
    ray.is_initialized = lambda: True
    return ray


def test_sharded_users_give_the_local_figures(tiny_dir, tmp_path, monkeypatch):
    ray = _fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    extra = ("policies=['random', 'never']", "fusions=['fusion']", "budgets=[0.3]",
             "network.loss=0.1", "device_only=false", "ray_workers=3")
    local = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra)), tmp_path / "local", progress=False)
    sharded = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra, "backend='ray'")), tmp_path / "ray",
                       progress=False)
    assert len(ray.calls) == 3 * len(sharded["runs"])  # every run went out as three shards
    assert {len(c) for c in ray.calls} == {10}  # 30 users over 3 workers
    for a, b in zip(local["runs"], sharded["runs"]):
        assert {k: a[k] for k in ("ndcg@10", "hr@10", "requests", "failed_requests", "bytes_up_per_event")} == \
               {k: b[k] for k in ("ndcg@10", "hr@10", "requests", "failed_requests", "bytes_up_per_event")}, a["id"]
