"""In-process and gRPC modes give identical metrics for the same seed (real server on 127.0.0.1:0)."""
from __future__ import annotations

import pytest

from cloud import server as server_mod

from simulator.config import load_sim_config
from simulator.experiments import load_world
from simulator.models import popularity_generator
from simulator.run import simulate
from tests.simulator.conftest import small_overrides

FIGURES = ("hr@10", "ndcg@10", "mrr@10", "request_rate", "requests", "stale_slates", "failed_requests",
           "bytes_up_per_event", "bytes_down_per_event", "latency_p50_ms")


def test_inprocess_and_grpc_give_identical_metrics(tiny_dir, tmp_path):
    extra = ("policies=['always', 'random', 'budget']", "fusions=['fusion', 'llm']", "budgets=[0.3]",
             "network.loss=0.1", "device_only=false")
    local = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra)), tmp_path / "local", progress=False)
    # The server gets the very generator the in-process mode built (popularity over what the cloud saw).
    world = load_world(load_sim_config(None, small_overrides(tiny_dir, *extra)))
    generator = popularity_generator(world.streams.cloud_seen, world.dataset.num_items)
    server, port = server_mod.create_server(server_mod.ServerConfig(address="127.0.0.1:0"), generator)
    try:
        remote_cfg = load_sim_config(None, small_overrides(tiny_dir, *extra, "mode='grpc'", f"server='127.0.0.1:{port}'"))
        remote = simulate(remote_cfg, tmp_path / "grpc", progress=False)
    finally:
        server.stop(0)
    assert [r["id"] for r in local["runs"]] == [r["id"] for r in remote["runs"]]
    for a, b in zip(local["runs"], remote["runs"]):
        assert {k: a[k] for k in FIGURES} == {k: b[k] for k in FIGURES}, a["id"]
    assert local["calibration"] == remote["calibration"]
