"""Training, checkpoints, cooperative training, adaptive re-training and the CLI, on tiny synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from device.training.train import TrainConfig, load_checkpoint, save_checkpoint, train
from shared.data.splits import loo_split, stream_split
from shared.errors import CatalogMismatchError, ConfigError, InvalidArgumentError, UnknownItemError
from tests.conftest import synthetic_dataset

TINY = {"hidden": 32, "max_len": 12}


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_users=40, num_items=50, min_len=18, max_len=30)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("srm")
    split = stream_split(data, stream_length=4, cloud_lag=2).srm_train()
    model, ckpt = train("sasrec", TINY, TrainConfig(epochs=6, batch_size=16, lr=5e-3, threads=1), split,
                        data.num_items, data.vocab_hash, out=out, progress=False)
    return out, model, ckpt, split


def test_training_learns_the_ring_walk(trained, data):
    from device.training.evaluate import evaluate, model_score_fn
    from device.training.models import build_model

    _, model, ckpt, split = trained
    torch.manual_seed(0)
    untrained = build_model("sasrec", {**TINY, "num_items": data.num_items})
    before = evaluate(model_score_fn(untrained), split.valid, 12, ks=(10,), rules=("removed",))["ndcg@10"]
    after = evaluate(model_score_fn(model), split.valid, 12, ks=(10,), rules=("removed",))["ndcg@10"]
    assert after > before + 0.2, (before, after)
    assert ckpt["metrics"]["valid_ndcg@10"] == pytest.approx(after)


def test_checkpoint_round_trip_and_catalogue_check(trained, data):
    out, model, ckpt, _ = trained
    loaded, meta = load_checkpoint(out / "srm.pt", data.vocab_hash)
    h = torch.randint(1, data.num_items + 1, (3, 12))
    c = torch.randint(1, data.num_items + 1, (3, 9))
    with torch.no_grad():
        assert torch.equal(loaded(h, c), model(h, c))
    assert meta["vocab_hash"] == data.vocab_hash and meta["train_config"]["epochs"] == 6
    assert meta["model_config"]["hidden"] == 32 and "valid_ndcg@10" in meta["metrics"] and meta["version"]
    with pytest.raises(CatalogMismatchError):
        load_checkpoint(out / "srm.pt", "another-catalogue")


@pytest.mark.parametrize("name, loss", [("sasrec", "bce"), ("gru4rec", "ce"), ("gru4rec", "sampled_ce"),
                                        ("din", "sampled_ce"), ("din", "bce")])
def test_every_model_and_loss_trains(data, name, loss):
    split = loo_split(data)
    _, ckpt = train(name, TINY, TrainConfig(epochs=2, batch_size=32, negatives=8, loss=loss, threads=1,
                                            lr=5e-3), split, data.num_items, data.vocab_hash, progress=False)
    losses = [h["loss"] for h in ckpt["history"]]
    assert all(np.isfinite(losses)) and ckpt["metrics"]["valid_ndcg@10"] >= 0


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_history_bias_learns_that_the_ring_walk_does_not_repeat(data, loss):
    """The synthetic users never revisit the item they just left: the learned offset for the most recent
    item turns negative (it starts at 0)."""
    model, _ = train("sasrec", {**TINY, "history_bias": True}, TrainConfig(epochs=3, batch_size=16, lr=5e-3,
                     loss=loss, negatives=8, threads=1), loo_split(data), data.num_items, data.vocab_hash,
                     progress=False)
    offsets = model.history_bias.by_age.detach()
    assert offsets[0] < -0.5, offsets


def biased_sasrec(num_items: int):
    """A tiny SASRec (seeded weights, eval mode) whose history bias is non-zero, for loss equivalences."""
    from device.training.models import build_model

    torch.manual_seed(0)
    model = build_model("sasrec", {**TINY, "history_bias": True, "num_items": num_items}).eval()
    with torch.no_grad():
        model.history_bias.raw.fill_(-0.2)
    return model


def test_listwise_loss_scores_as_the_model_does(data):
    """The cooperative loss takes a shortcut for all-position models; it must score like `forward`
    (history bias included) and like `score_all` for its full-catalogue term."""
    import torch.nn.functional as F

    from device.training.coop import listwise_loss

    model = biased_sasrec(data.num_items)
    history = torch.randint(1, data.num_items + 1, (4, 12))
    target = torch.randint(1, data.num_items + 1, (4,))
    cands = torch.cat([history[:, -3:], torch.randint(1, data.num_items + 1, (4, 5))], dim=1)  # some seen
    cands = torch.where(cands == target.unsqueeze(1), cands % data.num_items + 1, cands)
    first = torch.zeros(4, dtype=torch.long)  # the target leads each list
    with torch.no_grad():
        listwise = F.cross_entropy(model(history, torch.cat([target.unsqueeze(1), cands], 1)), first)
        full = F.cross_entropy(model.score_all(history), target)
        assert torch.allclose(listwise_loss(model, history, target, cands), listwise, atol=1e-5)
        both = listwise_loss(model, history, target, cands, ce_weight=0.5)
        assert torch.allclose(both, listwise + 0.5 * full, atol=1e-5)
        # listed_only: only row 0 lists its target, so only its list counts (target at index 4 of it)
        cands[0, 4] = target[0]
        only = listwise_loss(model, history, target, cands, listed_only=True)
        assert torch.allclose(only, F.cross_entropy(model(history[:1], cands[:1]), torch.tensor([4])), atol=1e-5)


def test_finetune_warm_starts_and_versions(trained, data, tmp_path):
    from device.training.finetune import finetune

    out, model, ckpt, split = trained
    fresh = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([10, 11, 12, 13])]
    path, figures = finetune(out / "srm.pt", fresh, budget_s=1.0, out=tmp_path, first_fresh=[4, 1],
                             vocab_hash=data.vocab_hash, return_figures=True)
    new, meta = load_checkpoint(path, data.vocab_hash)
    old = load_checkpoint(out / "srm.pt")[1]
    assert meta["parent"] == old["version"] and meta["version"] != old["version"]
    assert figures["epochs"] >= 1
    changed = any(not torch.equal(a, b) for a, b in zip(new.state_dict().values(), model.state_dict().values()))
    assert changed
    with pytest.raises(UnknownItemError):
        finetune(out / "srm.pt", [np.array([1, data.num_items + 1])], 1.0, tmp_path / "bad")
    with pytest.raises(CatalogMismatchError):
        finetune(out / "srm.pt", fresh, 1.0, tmp_path / "bad", vocab_hash="other")
    # an epoch cap ends it before the time budget (the simulator's re-training passes retrain.epochs)
    _, capped = finetune(out / "srm.pt", fresh, budget_s=30.0, out=tmp_path / "capped", first_fresh=[4, 1],
                         return_figures=True, max_epochs=2)
    assert capped["epochs"] == 2 and capped["seconds"] < 30.0
    with pytest.raises(InvalidArgumentError):
        finetune(out / "srm.pt", fresh, 1.0, tmp_path / "bad", max_epochs=0)


def test_fresh_only_targets():
    from device.training.train import _windows

    x, y = _windows([np.array([1, 2, 3, 4, 5])], 8, np.random.default_rng(0), first_target=[3])
    assert x[0].tolist()[-4:] == [1, 2, 3, 4] and y[0].tolist()[-4:] == [0, 0, 4, 5]


def test_windows_carry_each_targets_candidate_list():
    """Every window position gets the list of its own target (lists[i][p] belongs to target seq[p + 1])."""
    from device.training.train import _windows

    seqs = [np.arange(1, 31), np.arange(40, 47)]
    lists = [np.stack([[seq[p + 1] + 100, seq[p + 1] + 200] for p in range(len(seq) - 1)]) for seq in seqs]
    for seed in range(3):  # the window ends shift with the seed
        x, y, window_lists = _windows(seqs, 8, np.random.default_rng(seed), lists=lists)
        assert window_lists.shape == (len(x), 8, 2)
        real = y > 0
        assert np.array_equal(window_lists[real][:, 0], y[real] + 100)
        assert np.array_equal(window_lists[real][:, 1], y[real] + 200)
        assert not window_lists[~real].any()


def test_list_training_at_every_position_matches_the_listwise_loss(data):
    """batch_loss with lists (cooperative training from the start) scores a position's list exactly as
    coop.listwise_loss scores that history's list, full-catalogue term included."""
    from device.training.coop import listwise_loss
    from device.training.train import ListLoss, batch_loss

    model = biased_sasrec(data.num_items)
    history = torch.randint(1, data.num_items + 1, (4, 12))
    last = torch.randint(1, data.num_items + 1, (4,))
    cands = torch.cat([history[:, -2:], torch.randint(1, data.num_items + 1, (4, 5))], dim=1)
    cands[0, 3] = last[0]  # a candidate equal to the target is masked by both
    targets = torch.zeros(4, 12, dtype=torch.long)
    targets[:, -1] = last  # only the last position has a target
    lists = torch.zeros(4, 12, 7, dtype=torch.long)
    lists[:, -1] = cands
    config = TrainConfig(loss="ce")
    with torch.no_grad():
        for weight in (0.0, 0.5):
            for listed_only in (False, True):
                ours = batch_loss(model, history, targets, config, torch.Generator(), lists,
                                  ListLoss(weight, listed_only))
                assert torch.allclose(ours, listwise_loss(model, history, last, cands, weight, listed_only), atol=1e-5)
    with pytest.raises(ConfigError):
        batch_loss(model, history, targets, TrainConfig(loss="bce"), torch.Generator(), lists)


class CountingGenerator:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    version = property(lambda self: self.inner.version)
    num_items = property(lambda self: self.inner.num_items)

    def generate(self, histories, n, excludes=None):
        self.calls += 1
        return self.inner.generate(histories, n, excludes)


def test_candidate_lists_are_valid_and_cached(data, tmp_path):
    from device.training.coop import candidate_lists
    from shared.generator import PopularityGenerator

    gen = CountingGenerator(PopularityGenerator.from_sequences(data.sequences(), data.num_items))
    histories = [s[:10] for s in data.sequences()[:5]]
    first = candidate_lists(gen, histories, 8, 2, tmp_path)
    assert first.shape == (5, 8) and gen.calls == 1
    for h, row in zip(histories, first):
        assert len(set(row)) == 8 and not set(row) & set(h.tolist())  # distinct, none already seen
    again = candidate_lists(gen, histories, 8, 2, tmp_path)
    assert gen.calls == 1 and np.array_equal(first, again)


def test_cooperative_training_improves_list_ranking(trained, data, tmp_path):
    import copy

    from device.training.coop import CoopConfig, coop_train, protocol_b_lists, protocol_b_rerank
    from shared.generator import PopularityGenerator

    _, model, ckpt, split = trained
    stream = stream_split(data, stream_length=4, cloud_lag=2)
    gen = PopularityGenerator.from_sequences(stream.cloud_seen, data.num_items)
    config = CoopConfig(num_candidates=10, histories_per_user=6, lag=2, epochs=4, batch_size=32, lr=2e-3)
    coop, new = coop_train(copy.deepcopy(model), "sasrec", split, gen, config, data.vocab_hash, tmp_path,
                           out=tmp_path, parent=ckpt.get("version"), progress=False)
    assert new["metrics"]["valid_list_ndcg@10"] >= new["history"][0]["valid_list_ndcg@10"]
    lists = protocol_b_lists(stream, gen, 10, tmp_path)
    figures = protocol_b_rerank(coop, stream, lists)
    assert figures["steps"] == len(stream) * 4 and 0 <= figures["srm/ndcg@10"] <= 1
    assert load_checkpoint(tmp_path / "srm.pt", data.vocab_hash)[1]["generator_version"] == "popularity"


def test_cli_train_eval_export(tmp_path, capsys):
    from shared.data.dataset import write_dataset
    from simulator.cli import main

    data = synthetic_dataset(num_users=30, num_items=40, min_len=16, max_len=22)
    write_dataset(data, tmp_path / "data")
    rc = main(["train", "srm", "--data", str(tmp_path / "data"), "--model", "gru4rec", "--out",
               str(tmp_path / "run"), "--config", "device/training/presets/tiny.toml", "--set", "train.epochs=1", "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["protocol"] == "stream" and "valid_ndcg@10" in trained
    rc = main(["eval", "srm", "--data", str(tmp_path / "data"), "--ckpt", str(tmp_path / "run"),
               "--protocol", "loo", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert rc == 0 and figures["users"] == 30 and {"hr@10", "ndcg@10", "seen_kept/hr@10", "recall@50"} <= set(figures)
    rc = main(["export", "srm", "--ckpt", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "x"),
               "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["onnx.size_bytes"] > 0
    rc = main(["eval", "srm", "--data", str(tmp_path / "data"), "--artifact", str(tmp_path / "x" / "onnx"), "--json"])
    from_artifact = json.loads(capsys.readouterr().out)
    assert rc == 0 and from_artifact["ndcg@10"] == pytest.approx(figures["ndcg@10"], abs=1e-9)
    # the items no training sequence held travel from the checkpoint into the manifest a device reads
    from device.training.train import load_checkpoint, untrained_items
    from shared.data.splits import stream_split
    from shared.manifest import read_manifest

    expected = untrained_items(stream_split(data).srm_train().train, data.num_items).tolist()
    assert load_checkpoint(tmp_path / "run")[1]["untrained_items"] == expected
    assert list(read_manifest(tmp_path / "x" / "onnx").untrained_items) == expected


@pytest.mark.parametrize("from_scratch", [False, True])
def test_coop_cli_starts_from_the_base_or_from_fresh_weights(tmp_path, monkeypatch, capsys, from_scratch):
    """`train srm --coop --resume CKPT`: fine-tunes the base's weights, or with coop.from_scratch=true trains
    the same architecture from fresh (seeded) weights."""
    from device.training import coop
    from device.training.models import build_model
    from shared.data.dataset import write_dataset
    from simulator.cli import main

    data = synthetic_dataset(num_users=30, num_items=40, min_len=16, max_len=22)
    write_dataset(data, tmp_path / "data")
    assert main(["train", "srm", "--data", str(tmp_path / "data"), "--model", "sasrec", "--out", str(tmp_path / "base"),
                 "--config", "device/training/presets/tiny.toml", "--set", "train.epochs=1", "--json"]) == 0
    capsys.readouterr()
    base, base_ckpt = load_checkpoint(tmp_path / "base" / "srm.pt", data.vocab_hash)
    started: list = []

    def snapshot(model):
        started.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        return model

    if from_scratch:  # SASRec: device.training.train.train builds the fresh model (coop.coop_from_scratch)
        from device.training import train as train_module

        build = train_module.build_model
        monkeypatch.setattr(train_module, "build_model", lambda *a, **k: snapshot(build(*a, **k)))
    else:
        real = coop.coop_train
        monkeypatch.setattr(coop, "coop_train", lambda model, *a, **k: real(snapshot(model), *a, **k))
    assert main(["train", "srm", "--data", str(tmp_path / "data"), "--model", "sasrec", "--coop", "--resume",
                 str(tmp_path / "base" / "srm.pt"), "--generator", "popularity", "--out", str(tmp_path / "coop"),
                 "--set", f"coop.from_scratch={'true' if from_scratch else 'false'}", "--set", "coop.epochs=1",
                 "--set", "coop.num_candidates=5", "--set", "coop.histories_per_user=2", "--json"]) == 0
    torch.manual_seed(0)  # CoopConfig's default seed
    fresh = build_model("sasrec", base_ckpt["model_config"]).state_dict()
    expected = fresh if from_scratch else base.state_dict()
    assert all(torch.equal(started[-1][n], expected[n]) for n in expected)  # (loading --resume builds one first)
    assert "coop/srm/ndcg@10" in json.loads(capsys.readouterr().out)
    coop_ckpt = load_checkpoint(tmp_path / "coop" / "srm.pt", data.vocab_hash)[1]
    assert coop_ckpt["parent"] == base_ckpt["version"] and coop_ckpt["generator_version"] == "popularity"
    assert "valid_list_ndcg@10" in coop_ckpt["metrics"] and coop_ckpt["coop_config"]["from_scratch"] == from_scratch


PRESETS = sorted((Path(__file__).resolve().parents[2] / "device" / "training" / "presets").glob("*.toml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_srm_preset_loads(preset):
    """Each shipped preset parses: model presets build an ML-100K-sized model within 2 MB, coop presets a CoopConfig."""
    import argparse
    import tomllib

    from device.training.coop import CoopConfig
    from device.training.models import MODEL_NAMES, build_model
    from device.training.cli import _load_configs
    from shared.config import load_config

    tables = tomllib.loads(preset.read_text())
    if "coop" in tables:
        assert isinstance(load_config(CoopConfig, preset, [], section="coop"), CoopConfig)
        return
    name = preset.stem.split("-")[0] if preset.stem.split("-")[0] in MODEL_NAMES else "sasrec"
    model_dict, train_config = _load_configs(argparse.Namespace(config=preset, overrides=[], seed=None), name)
    model = build_model(name, {**model_dict, "num_items": 1682})
    assert sum(p.numel() * p.element_size() for p in model.parameters()) <= 2_000_000
    assert train_config.epochs >= 1
