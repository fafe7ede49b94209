"""Training, checkpoints, cooperative training, adaptive re-training and the CLI, on tiny synthetic data.

The behaviour tests train on a ring walk without noise (every user's next item is the one after the current
one), which a sequence model learns within a few epochs: each way of training must then measurably get better
at its own objective.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from device.training.coop import (CoopConfig, candidate_lists, coop_from_scratch, coop_train, list_figures,
                                  listwise_loss, protocol_b_lists, protocol_b_rerank)
from device.training.evaluate import evaluate, model_score_fn
from device.training.finetune import finetune
from device.training.models import MODELS, build_model
from device.training.models.common import SequentialRecommender, dot_scores
from device.training.artifacts import load_checkpoint
from device.training.train import (Epoch, ListLoss, Selection, TrainConfig, _windows, batch_loss, fit, fixed_batches,
                                   train, untrained_items)
from shared.config import check
from shared.data.dataset import RawItem, build_dataset, write_dataset
from shared.data.splits import Examples, loo_split, stream_split
from shared.errors import CatalogMismatchError, ConfigError, InvalidArgumentError, UnknownItemError
from shared.generator import PopularityGenerator
from shared.records import Candidate
from shared.sequences import pad_left
from simulator.cli import main
from tests.conftest import synthetic_dataset

TINY = {"hidden": 32, "max_len": 12}
RING = {"hidden": 16, "max_len": 8}  # enough for the ring walk


def ring_dataset(num_users: int = 40, num_items: int = 30, step: int = 1, seed: int = 0):
    """Every user walks the item ring from a random start: the next item is always the current one + `step`."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(1, num_users + 1):
        item = int(rng.integers(num_items))
        for t in range(int(rng.integers(10, 16))):
            events.append((f"u{user}", str((item + step * t) % num_items + 1), 1_000_000 + 100 * t))
    items = {str(i): RawItem(str(i), f"Item {i}", 2000, ()) for i in range(1, num_items + 1)}
    return build_dataset(events, items, meta={"source": "ring"})


def valid_loss(model, examples: Examples) -> float:
    """Full-catalogue cross-entropy of the examples' targets (what full-CE training lowers)."""
    model.eval()
    with torch.no_grad():
        scores = model.score_all(torch.from_numpy(pad_left(examples.histories, model.max_len)))
        return float(F.cross_entropy(scores, torch.from_numpy(np.asarray(examples.targets))))


def hr1(model, examples: Examples) -> float:
    return evaluate(model_score_fn(model), examples, model.max_len, ks=(1,), rules=("removed",))["hr@1"]


def fresh(name: str, num_items: int, seed: int = 0, config: dict = RING):
    torch.manual_seed(seed)
    return build_model(name, {**config, "num_items": num_items}).eval()


@pytest.fixture(scope="module")
def ring():
    return ring_dataset()


@pytest.fixture(scope="module")
def ring_trained(ring, tmp_path_factory):
    """SASRec trained independently on the ring (full CE), with its checkpoint folder."""
    out = tmp_path_factory.mktemp("ring-srm")
    split = loo_split(ring)
    model, ckpt = train("sasrec", RING, TrainConfig(epochs=8, batch_size=16, lr=1e-2, threads=1), split,
                        ring.num_items, ring.vocab_hash, out=out, progress=False)
    return out, model, ckpt, split


# ---- independent training ----------------------------------------------------------------------------------

def test_independent_training_learns_the_ring(ring, ring_trained):
    _, model, ckpt, split = ring_trained
    untrained = fresh("sasrec", ring.num_items)
    assert valid_loss(model, split.valid) < 0.5 * valid_loss(untrained, split.valid)
    assert hr1(model, split.valid) >= 0.9 > hr1(untrained, split.valid) + 0.5
    assert ckpt["metrics"]["valid_ndcg@10"] == pytest.approx(
        evaluate(model_score_fn(model), split.valid, RING["max_len"], ks=(10,), rules=("removed",))["ndcg@10"])
    losses = [h["loss"] for h in ckpt["history"]]
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name, loss", [("sasrec", "bce"), ("sasrec", "sampled_ce"), ("gru4rec", "ce"),
                                        ("gru4rec", "sampled_ce"), ("din", "sampled_ce"), ("din", "bce")])
def test_every_model_and_loss_learns_the_ring(ring, name, loss):
    split = loo_split(ring)
    model, ckpt = train(name, RING, TrainConfig(epochs=12, batch_size=16, negatives=8, loss=loss, threads=1, lr=1e-2),
                        split, ring.num_items, ring.vocab_hash, progress=False)
    assert valid_loss(model, split.valid) < 0.6 * valid_loss(fresh(name, ring.num_items), split.valid)
    assert hr1(model, split.valid) >= 0.7, ckpt["history"]  # chance: about 1 in 20


def test_checkpoint_round_trip_and_catalogue_check(ring, ring_trained):
    out, model, ckpt, _ = ring_trained
    loaded, meta = load_checkpoint(out / "srm.pt", ring.vocab_hash)
    h = torch.randint(1, ring.num_items + 1, (3, RING["max_len"]))
    c = torch.randint(1, ring.num_items + 1, (3, 9))
    with torch.no_grad():
        assert torch.equal(loaded(h, c), model(h, c))
    assert meta["vocab_hash"] == ring.vocab_hash and meta["train_config"]["epochs"] == 8
    assert meta["model_config"]["hidden"] == 16 and "valid_ndcg@10" in meta["metrics"] and meta["version"]
    with pytest.raises(CatalogMismatchError):
        load_checkpoint(out / "srm.pt", "another-catalogue")


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_history_bias_learns_that_the_ring_walk_does_not_repeat(loss):
    """The synthetic users never revisit the item they just left: the learned offset for the most recent
    item turns negative (it starts at 0)."""
    data = synthetic_dataset(num_users=40, num_items=50, min_len=18, max_len=30)
    model, _ = train("sasrec", {**TINY, "history_bias": True}, TrainConfig(epochs=3, batch_size=16, lr=5e-3,
                     loss=loss, negatives=8, threads=1), loo_split(data), data.num_items, data.vocab_hash,
                     progress=False)
    offsets = model.history_bias.by_age.detach()
    assert offsets[0] < -0.5, offsets


# ---- the one loop ------------------------------------------------------------------------------------------

class Scripted:
    """A validation that returns the given figures in turn (and remembers the weights it saw)."""

    def __init__(self, *values):
        self.values, self.seen = list(values), []

    def __call__(self, model):
        self.seen.append(copy.deepcopy(model.state_dict()))
        return {"m": self.values.pop(0)}


def _toy_fit(validate: Scripted, start_competes: bool, epochs: int = 6, patience: int = 2):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = np.ones((4, 3), dtype=np.float32)

    def loss(model, batch):
        return model(batch).pow(2).mean()

    result = fit(model, optimizer, lambda: Epoch((x,), [np.arange(4)]), loss, TrainConfig(patience=patience),
                 epochs, Selection(validate, "m", start_competes), progress=False)
    return model, result


def test_fit_keeps_the_best_epoch_and_stops_on_patience():
    validate = Scripted(0.1, 0.5, 0.3, 0.2, 0.9)
    model, result = _toy_fit(validate, start_competes=False)
    assert result.epochs == 4 and result.epoch == 2 and result.figures == {"m": 0.5}  # 0.9 is never reached
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and all(h["loss"] >= 0 for h in result.history)
    assert all(torch.equal(v, validate.seen[1][k]) for k, v in model.state_dict().items())
    assert not model.training


def test_fit_with_competing_start_returns_the_start_when_no_epoch_beats_it():
    validate = Scripted(0.7, 0.1, 0.2, 0.3)
    model, result = _toy_fit(validate, start_competes=True)
    assert result.epoch == 0 and result.epochs == 2 and result.figures == {"m": 0.7}
    assert result.history[0] == {"epoch": 0, "m": 0.7}
    assert all(torch.equal(v, validate.seen[0][k]) for k, v in model.state_dict().items())


def test_gradient_clip_is_the_config_field():
    """Every step clips the gradient norm at TrainConfig.grad_clip: a tiny clip moves the weights less."""
    def moved(clip: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        before = model.weight.detach().clone()
        x = np.full((4, 3), 100.0, dtype=np.float32)
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda: Epoch((x,), [np.arange(4)]),
            lambda m, b: m(b).pow(2).mean(), TrainConfig(grad_clip=clip), 1, progress=False)
        return float((model.weight.detach() - before).norm())

    assert moved(1e-3) == pytest.approx(0.1 * 1e-3, rel=1e-3) and moved(5.0) > 100 * moved(1e-3)
    assert TrainConfig().grad_clip == 5.0


def test_batches_cover_every_row_once():
    batches = fixed_batches(10, 4, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(np.concatenate(batches)) == list(range(10))


# ---- losses and windows ------------------------------------------------------------------------------------

def biased_sasrec(num_items: int):
    """A tiny SASRec (seeded weights, eval mode) whose history bias is non-zero, for loss equivalences."""
    torch.manual_seed(0)
    model = build_model("sasrec", {**TINY, "history_bias": True, "num_items": num_items}).eval()
    with torch.no_grad():
        model.history_bias.raw.fill_(-0.2)
    return model


def test_listwise_loss_scores_as_the_model_does():
    """The cooperative loss takes a shortcut for all-position models; it must score like `forward`
    (history bias included) and like `score_all` for its full-catalogue term."""
    n = 50
    model = biased_sasrec(n)
    history = torch.randint(1, n + 1, (4, 12))
    target = torch.randint(1, n + 1, (4,))
    cands = torch.cat([history[:, -3:], torch.randint(1, n + 1, (4, 5))], dim=1)  # some seen
    cands = torch.where(cands == target.unsqueeze(1), cands % n + 1, cands)
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


def test_fresh_only_targets():
    x, y = _windows([np.array([1, 2, 3, 4, 5])], 8, np.random.default_rng(0), first_target=[3])
    assert x[0].tolist()[-4:] == [1, 2, 3, 4] and y[0].tolist()[-4:] == [0, 0, 4, 5]


def test_windows_carry_each_targets_candidate_list():
    """Every window position gets the list of its own target (lists[i][p] belongs to target seq[p + 1])."""
    seqs = [np.arange(1, 31), np.arange(40, 47)]
    lists = [np.stack([[seq[p + 1] + 100, seq[p + 1] + 200] for p in range(len(seq) - 1)]) for seq in seqs]
    for seed in range(3):  # the window ends shift with the seed
        x, y, window_lists = _windows(seqs, 8, np.random.default_rng(seed), lists=lists)
        assert window_lists.shape == (len(x), 8, 2)
        real = y > 0
        assert np.array_equal(window_lists[real][:, 0], y[real] + 100)
        assert np.array_equal(window_lists[real][:, 1], y[real] + 200)
        assert not window_lists[~real].any()


def test_list_training_at_every_position_matches_the_listwise_loss():
    """batch_loss with lists (cooperative training from the start) scores a position's list exactly as
    coop.listwise_loss scores that history's list, full-catalogue term included."""
    n = 50
    model = biased_sasrec(n)
    history = torch.randint(1, n + 1, (4, 12))
    last = torch.randint(1, n + 1, (4,))
    cands = torch.cat([history[:, -2:], torch.randint(1, n + 1, (4, 5))], dim=1)
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


# ---- cooperative training ----------------------------------------------------------------------------------

class CountingGenerator:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    version = property(lambda self: self.inner.version)
    num_items = property(lambda self: self.inner.num_items)

    def generate(self, histories, n, excludes=None):
        self.calls += 1
        return self.inner.generate(histories, n, excludes)


def test_candidate_lists_are_valid_and_cached(tmp_path):
    data = synthetic_dataset(num_users=40, num_items=50, min_len=18, max_len=30)
    gen = CountingGenerator(PopularityGenerator.from_sequences(data.sequences(), data.num_items))
    histories = [s[:10] for s in data.sequences()[:5]]
    first = candidate_lists(gen, histories, 8, 2, tmp_path)
    assert first.shape == (5, 8) and gen.calls == 1
    for h, row in zip(histories, first):
        assert len(set(row)) == 8 and not set(row) & set(h.tolist())  # distinct, none already seen
    again = candidate_lists(gen, histories, 8, 2, tmp_path)
    assert gen.calls == 1 and np.array_equal(first, again)


class EveryUnseenItem:
    """A generator whose list holds every unseen item (so always the target) in one fixed shuffled order that
    knows nothing of the ring: re-ranking it well is what the SRM must learn."""

    version = "every-unseen"

    def __init__(self, num_items: int):
        self.num_items = num_items
        self.order = np.random.default_rng(0).permutation(num_items) + 1

    def generate(self, histories, n, excludes=None):
        lists = []
        for row, history in enumerate(histories):
            blocked = set(history) | set(excludes[row] if excludes else ())
            lists.append([Candidate(int(i), 0.0) for i in self.order if int(i) not in blocked][:n])
        return lists


def ring_lists(ring):
    """The ring's LOO split, a generator of lists that always hold the target, and the list length."""
    return loo_split(ring), EveryUnseenItem(ring.num_items), ring.num_items


def test_cooperative_fine_tuning_learns_to_pick_the_target_from_its_list(ring, tmp_path):
    split, gen, n = ring_lists(ring)
    config = CoopConfig(num_candidates=n, histories_per_user=6, lag=0, epochs=6, batch_size=16, lr=1e-2, patience=6)
    start = fresh("sasrec", n)
    model, ckpt = coop_train(copy.deepcopy(start), "sasrec", split, gen, config, ring.vocab_hash, tmp_path,
                             out=tmp_path, parent="p", progress=False)
    history = ckpt["history"]
    assert ckpt["metrics"]["valid_list_ndcg@10"] > history[0]["valid_list_ndcg@10"] + 0.3, history
    assert history[-1]["loss"] < 0.5 * history[1]["loss"]
    valid_lists = candidate_lists(gen, split.valid.histories, n, 0, tmp_path)
    assert list_figures(model, split.valid, valid_lists) == {k: v for k, v in ckpt["metrics"].items()}
    saved = load_checkpoint(tmp_path / "srm.pt", ring.vocab_hash)[1]
    assert saved["generator_version"] == "every-unseen" and saved["parent"] == "p"


def test_cooperative_fine_tuning_of_din(ring, tmp_path):
    """DIN has no per-position states: one list per sampled history, the same loop."""
    split, gen, n = ring_lists(ring)
    config = CoopConfig(num_candidates=n, histories_per_user=6, lag=0, epochs=6, batch_size=16, lr=1e-2, patience=6)
    _, ckpt = coop_train(fresh("din", n), "din", split, gen, config, ring.vocab_hash, tmp_path, progress=False)
    assert ckpt["metrics"]["valid_list_ndcg@10"] > ckpt["history"][0]["valid_list_ndcg@10"] + 0.2, ckpt["history"]


def test_cooperative_training_from_scratch_learns_the_lists(ring, ring_trained, tmp_path):
    _, _, parent, _ = ring_trained
    split, gen, n = ring_lists(ring)
    config = CoopConfig(num_candidates=n, lag=0, epochs=6, batch_size=16, lr=1e-2, patience=6, from_scratch=True)
    model, ckpt = coop_from_scratch("sasrec", parent, split, gen, config, ring.vocab_hash, tmp_path, progress=False)
    untrained = list_figures(fresh("sasrec", n), split.valid, candidate_lists(gen, split.valid.histories, n, 0, tmp_path))
    assert ckpt["metrics"]["valid_list_ndcg@10"] > untrained["valid_list_ndcg@10"] + 0.3
    assert ckpt["train_config"]["lr"] == 1e-2 and ckpt["coop_config"]["from_scratch"]


def test_protocol_b_rerank_counts_every_stream_step(ring, ring_trained, tmp_path):
    _, model, _, _ = ring_trained
    stream = stream_split(ring, stream_length=3, cloud_lag=1)
    lists = protocol_b_lists(stream, EveryUnseenItem(ring.num_items), ring.num_items, tmp_path)
    figures = protocol_b_rerank(model, stream, lists)
    assert figures["steps"] == len(stream) * 3 and figures["list_recall"] == 1.0
    assert figures["srm/hr@1"] >= 0.9 > figures["list/hr@1"] + 0.5  # the SRM knows the ring, the list's order not


# ---- fine-tuning on fresh events ---------------------------------------------------------------------------

def test_finetune_learns_a_new_habit(ring, ring_trained, tmp_path):
    """Users change habit (every third item of the ring): fine-tuning on their fresh events learns it."""
    out, model, _, _ = ring_trained
    new = loo_split(ring_dataset(step=3, seed=1))
    before = evaluate(model_score_fn(model), new.valid, RING["max_len"], ks=(10,), rules=("removed",))["ndcg@10"]
    path, figures = finetune(out / "srm.pt", new.train, budget_s=60.0, out=tmp_path, vocab_hash=ring.vocab_hash,
                             lr=1e-2, valid=new.valid, return_figures=True, max_epochs=8)
    assert figures["epochs"] == 8 and figures["valid_ndcg@10"] > before + 0.3, (before, figures)
    assert valid_loss(load_checkpoint(path)[0], new.valid) < valid_loss(model, new.valid)


def test_finetune_warm_starts_and_versions(ring, ring_trained, tmp_path):
    out, model, _, _ = ring_trained
    fresh_events = [np.array([1, 2, 3, 4, 5, 6, 7]), np.array([10, 11, 12, 13])]
    path, figures = finetune(out / "srm.pt", fresh_events, budget_s=1.0, out=tmp_path, first_fresh=[4, 1],
                             vocab_hash=ring.vocab_hash, return_figures=True)
    new, meta = load_checkpoint(path, ring.vocab_hash)
    old = load_checkpoint(out / "srm.pt")[1]
    assert meta["parent"] == old["version"] and meta["version"] != old["version"]
    assert figures["epochs"] >= 1
    changed = any(not torch.equal(a, b) for a, b in zip(new.state_dict().values(), model.state_dict().values()))
    assert changed
    with pytest.raises(UnknownItemError):
        finetune(out / "srm.pt", [np.array([1, ring.num_items + 1])], 1.0, tmp_path / "bad")
    with pytest.raises(CatalogMismatchError):
        finetune(out / "srm.pt", fresh_events, 1.0, tmp_path / "bad", vocab_hash="other")
    # an epoch cap ends it before the time budget (the simulator's re-training passes retrain.epochs)
    _, capped = finetune(out / "srm.pt", fresh_events, budget_s=30.0, out=tmp_path / "capped", first_fresh=[4, 1],
                         return_figures=True, max_epochs=2)
    assert capped["epochs"] == 2 and capped["seconds"] < 30.0
    with pytest.raises(InvalidArgumentError):
        finetune(out / "srm.pt", fresh_events, 1.0, tmp_path / "bad", max_epochs=0)


def test_finetune_with_nothing_fresh_to_learn_keeps_the_weights(ring_trained, tmp_path):
    out, model, _, _ = ring_trained
    events = [np.array([1, 2, 3, 4]), np.array([7, 8])]
    path, figures = finetune(out / "srm.pt", events, 5.0, tmp_path, first_fresh=[4, 2], return_figures=True)
    assert figures["epochs"] == 0 and np.isnan(figures["loss"])
    assert all(torch.equal(a, b) for a, b in zip(load_checkpoint(path)[0].state_dict().values(),
                                                  model.state_dict().values()))


# ---- the CLI -----------------------------------------------------------------------------------------------

def test_cli_train_eval_export(tmp_path, capsys):
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
    from shared.manifest import read_manifest

    expected = untrained_items(stream_split(data).srm_train().train, data.num_items).tolist()
    assert load_checkpoint(tmp_path / "run")[1]["untrained_items"] == expected
    assert list(read_manifest(tmp_path / "x" / "onnx").untrained_items) == expected


def test_cli_refuses_an_unregistered_model_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "srm", "--data", str(tmp_path), "--model", "bert4rec", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "'bert4rec'" in err and all(name in err for name in MODELS.names())


@pytest.mark.parametrize("from_scratch", [False, True])
def test_coop_cli_starts_from_the_base_or_from_fresh_weights(tmp_path, monkeypatch, capsys, from_scratch):
    """`train srm --coop --resume CKPT`: fine-tunes the base's weights, or with coop.from_scratch=true trains
    the same architecture from fresh (seeded) weights."""
    from device.training import coop

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
    fresh_weights = build_model("sasrec", base_ckpt["model_config"]).state_dict()
    expected = fresh_weights if from_scratch else base.state_dict()
    assert all(torch.equal(started[-1][n], expected[n]) for n in expected)  # (loading --resume builds one first)
    assert "coop/srm/ndcg@10" in json.loads(capsys.readouterr().out)
    coop_ckpt = load_checkpoint(tmp_path / "coop" / "srm.pt", data.vocab_hash)[1]
    assert coop_ckpt["parent"] == base_ckpt["version"] and coop_ckpt["generator_version"] == "popularity"
    assert "valid_list_ndcg@10" in coop_ckpt["metrics"] and coop_ckpt["coop_config"]["from_scratch"] == from_scratch


PRESETS = sorted((Path(__file__).resolve().parents[2] / "device" / "training" / "presets").glob("*.toml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_srm_preset_loads(preset):
    """Each shipped preset parses: model presets build an ML-100K-sized model within 2 MB, coop presets a CoopConfig."""
    import tomllib

    from device.training.configs import coop_config, train_configs

    tables = tomllib.loads(preset.read_text())
    if "coop" in tables:
        assert isinstance(coop_config(preset), CoopConfig)
        return
    name = preset.stem.split("-")[0] if preset.stem.split("-")[0] in MODELS else "sasrec"
    model_dict, train_config = train_configs(name, preset)
    model = build_model(name, {**model_dict, "num_items": 1682})
    assert sum(p.numel() * p.element_size() for p in model.parameters()) <= 2_000_000
    assert train_config.epochs >= 1


# ---- a new SRM is one file: registered from here, trained, exported and served -----------------------------

@dataclass(frozen=True)
class MarkovConfig:
    num_items: int = 1
    max_len: int = 8
    hidden: int = 16

    def __post_init__(self):
        check(self.hidden >= 1, "hidden", self.hidden, "must be at least 1")


class Markov(SequentialRecommender):
    """A first-order model: the user state at each position is a linear map of that item's embedding."""

    config_class = MarkovConfig
    all_positions = True

    def __init__(self, config: MarkovConfig):
        super().__init__()
        self.config, self.num_items, self.max_len = config, config.num_items, config.max_len
        self.item_emb = nn.Embedding(config.num_items + 1, config.hidden, padding_idx=0)
        self.step = nn.Linear(config.hidden, config.hidden)
        self.history_bias = None

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return self.step(self.item_emb(history)) * (history > 0).unsqueeze(-1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return dot_scores(self.item_vectors(candidates), self.encode(history)[:, -1, :])


def test_a_new_srm_registered_from_outside_trains_exports_and_serves(ring, tmp_path, capsys):
    """The whole path of an SRM the package has never seen: `train srm --model markov` (code-default configs,
    no preset), `export srm` to ONNX, and the device runtime's verified load, which then ranks the ring's next
    item first."""
    from device.runtime.artifact import load_reranker

    write_dataset(ring, tmp_path / "data")
    with MODELS.registered("markov", Markov):
        assert main(["train", "srm", "--data", str(tmp_path / "data"), "--model", "markov", "--protocol", "loo",
                     "--out", str(tmp_path / "run"), "--set", "train.epochs=10", "--set", "train.lr=0.02",
                     "--set", "train.batch_size=16", "--set", "train.threads=1", "--json"]) == 0
        trained = json.loads(capsys.readouterr().out)
        assert trained["model"] == "markov" and trained["valid_ndcg@10"] > 0.8
        assert main(["export", "srm", "--ckpt", str(tmp_path / "run"), "--format", "onnx", "--out",
                     str(tmp_path / "export"), "--json"]) == 0
    assert "markov" not in MODELS
    reranker = load_reranker(tmp_path / "export" / "onnx", vocab_hash=ring.vocab_hash)
    assert reranker.manifest.model_name == "markov" and reranker.history_length == MarkovConfig.max_len
    test = loo_split(ring).test
    histories = pad_left(test.histories, reranker.history_length)
    candidates = np.tile(np.arange(1, ring.num_items + 1), (len(test), 1))
    best = candidates[0][reranker.score(histories, candidates).argmax(1)]
    assert (best == test.targets).mean() >= 0.9
