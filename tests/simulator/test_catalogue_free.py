"""The simulator's catalogue-free device: real user-encoder sessions, vectors from the source, est-regret requests."""
from __future__ import annotations

import json

import numpy as np
import pytest

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
    assert type(world.device).__name__ == "UserEncoder" and world.vectors is not None
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
