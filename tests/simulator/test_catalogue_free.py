"""The simulator's catalogue-free device: real user-encoder sessions, vectors from the source, est-regret requests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device.runtime.encoder import UserEncoder
from shared.errors import ConfigError
from simulator.cli import main
from simulator.config import load_sim_config
from simulator.experiments import load_world
from simulator.run import simulate
from tests.simulator.conftest import small_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SASRec (rotary) trained on the tiny dataset, exported as a scorer and as a user encoder with a head."""
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    root = tmp_path_factory.mktemp("free")
    data = root / "data"
    write_dataset(synthetic_dataset(num_users=30, num_items=60, min_len=16, max_len=28, seed=3), data)
    assert main(["train", "srm", "--data", str(data), "--model", "sasrec", "--config", "tiny", "--out",
                 str(root / "run"), "--set", "model.positions=rotary", "--set", "train.epochs=3", "--json"]) == 0
    assert main(["export", "srm", "--ckpt", str(root / "run"), "--format", "onnx,user-encoder", "--data", str(data),
                 "--out", str(root / "run"), "--json"]) == 0
    return data, root / "run"


def _config(data, srm, *extra):
    return load_sim_config(None, small_overrides(data, f"srm='{srm}'", "policies=['budget']", "fusions=['fusion']",
                                                 "budgets=[0.3]", "device_only=true", *extra))


def test_the_devices_hold_no_catalogue_and_score_like_the_model_with_one(trained, tmp_path, capsys):
    data, srm = trained
    capsys.readouterr()
    free_cfg = _config(data, srm, "srm_format='user-encoder'", "measure='miss-belief'")
    world = load_world(free_cfg)
    assert isinstance(world.device, UserEncoder) and world.vectors is not None  # (a SharedEncoder)
    replay_sessions = __import__("simulator.experiments", fromlist=["make_replay"]).make_replay(world, progress=False)
    initial = replay_sessions.initial_lists()
    assert all(r.vectors is not None and len(r.vectors.item_ids) >= len(r.candidates) for r in initial)
    free = simulate(free_cfg, tmp_path / "free", progress=False, world=world)
    scorer = simulate(_config(data, srm, "measure='miss-belief'"), tmp_path / "scorer", progress=False)
    a = {r["id"]: r for r in free["runs"]}
    b = {r["id"]: r for r in scorer["runs"]}
    assert a.keys() == b.keys()
    for key in a:  # the same model, its int8 vectors: the same slates up to a few near-ties
        assert a[key]["ndcg@10"] == pytest.approx(b[key]["ndcg@10"], abs=0.02)
        assert a[key]["bytes_down_per_event"] > b[key]["bytes_down_per_event"]  # the vectors travel with the lists
    assert free["device_only"]["ndcg@10"] == pytest.approx(scorer["device_only"]["ndcg@10"], abs=0.02)


def test_est_regret_runs_on_the_partition_head(trained, tmp_path):
    data, srm = trained
    manifest = json.loads((srm / "user-encoder" / "manifest.json").read_text())
    assert manifest["outputs"][-1]["name"] == "log_partition" and np.isfinite(manifest["metrics"]["head_log_z_r2"])
    out = simulate(_config(data, srm, "srm_format='user-encoder'", "measure='est-regret'"), tmp_path / "est",
                   progress=False)
    budget = next(r for r in out["runs"] if r["policy"] == "budget")
    assert 0.15 < budget["request_rate"] < 0.45 and np.isfinite(budget["ndcg@10"])


@pytest.mark.parametrize("extra, field", [
    (("srm_format='user-encoder'", "measure='regret'"), "measure"),
    (("measure='est-regret'",), "measure"),
    (("srm_format='user-encoder'", "measure='miss-belief'", "retrain.every=10"), "retrain.every"),
])
def test_settings_a_catalogue_free_device_cannot_have_are_refused(tiny_dir, extra, field):
    with pytest.raises(ConfigError, match=field):
        load_sim_config(None, small_overrides(tiny_dir, *extra))


def test_grpc_replay_of_a_catalogue_free_device_equals_the_in_process_one(trained, tmp_path):
    """Devices get their vectors from a real server that publishes the user encoder's table (as `simulate --mode grpc`
    sets up when it starts one): every figure equals the in-process replay's, whose source adds the same rows."""
    from cloud import server as server_mod
    from simulator.models import popularity_generator
    from simulator.run import _published_encoder

    data, srm = trained
    extra = ("srm_format='user-encoder'", "measure='miss-belief'", "matched_random=false", "device_only=false")
    config = _config(data, srm, *extra)
    local = simulate(config, tmp_path / "local", progress=False)
    models = _published_encoder(config)
    assert [p.name.split("-")[0] for p in Path(models).iterdir()] == ["onnx"]
    world = load_world(config)
    generator = popularity_generator(world.streams.cloud_seen, world.dataset.num_items)
    server, port = server_mod.create_server(server_mod.ServerConfig(address="127.0.0.1:0"), generator, models)
    try:
        remote = simulate(_config(data, srm, *extra, "mode='grpc'", f"server='127.0.0.1:{port}'"), tmp_path / "remote",
                          progress=False)
    finally:
        server.stop(0)
    for a, b in zip(local["runs"], remote["runs"]):
        assert (a["id"], a["ndcg@10"], a["requests"]) == (b["id"], b["ndcg@10"], b["requests"])
        assert a["bytes_down_per_event"] == b["bytes_down_per_event"] > 0


def test_the_shared_encoder_remembers_steps_and_gives_what_the_encoder_gives(trained):
    from device.runtime.artifact import load_reranker
    from simulator.models import SharedEncoder

    _, srm = trained
    encoder = load_reranker(srm / "user-encoder")
    shared = SharedEncoder(encoder, keep=50)
    rows = np.random.default_rng(0).normal(size=(40, encoder.dim)).astype(np.float32)
    for _ in range(2):  # the second pass is all remembered
        plain, memo = encoder.new_state(), shared.new_state()
        plain.rebuild(rows[:8])
        memo.rebuild(rows[:8])
        for row in rows[8:]:
            np.testing.assert_array_equal(plain.append(row), memo.append(row))
            np.testing.assert_array_equal(plain.partition, memo.partition)
    assert 0 < len(shared._stepped) <= 50
