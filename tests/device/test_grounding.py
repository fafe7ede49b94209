"""`lsc4rec train ground`: untrained items get rows mapped from their text; nothing else in the checkpoint moves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from device.training.artifacts import load_checkpoint, make_checkpoint, save_checkpoint
from device.training.export import export_checkpoint
from device.training.grounding import fit_grounding, ground_checkpoint
from device.training.models.sasrec import SASRec, SASRecConfig
from device.training.train import TrainConfig
from simulator.cli import main
from shared.errors import CatalogMismatchError, DataFormatError, InvalidArgumentError
from shared.item_vectors import save_item_vectors
from shared.manifest import read_manifest

N, T, D, TEXT = 60, 8, 16, 24
UNTRAINED = [3, 17, 41, 58]


def test_the_map_is_recovered_and_its_strength_chosen_on_held_out_items():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(200, TEXT))
    true_map = rng.normal(size=(TEXT, D))
    rows = text @ true_map + 0.01 * rng.normal(size=(200, D)) + 3.0
    fit = fit_grounding(text[:150], rows[:150])
    assert fit.heldout_r2 > 0.99
    assert np.abs(fit.project(text[150:]) - rows[150:]).max() < 0.2
    noise = fit_grounding(rng.normal(size=(150, TEXT)), rows[:150])  # text that says nothing of the rows
    assert noise.heldout_r2 < 0.1 and noise.strength == max(noise.strength, fit.strength)


@pytest.fixture
def checkpoint(tmp_path):
    """An SASRec checkpoint whose rows are a linear function of the text vectors, except the untrained items'."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=N, max_len=T, hidden=D, heads=2, inner=32, positions="rotary"))
    rng = np.random.default_rng(1)
    text = rng.normal(size=(N, TEXT)).astype(np.float32)
    text_map = rng.normal(size=(TEXT, D)).astype(np.float32)
    with torch.no_grad():  # the untrained items' rows stay random: the map must come from the others
        model.item_emb.weight[1:] = torch.from_numpy(text @ text_map)
        model.item_emb.weight[UNTRAINED] = torch.randn(len(UNTRAINED), D)
    ckpt = make_checkpoint("sasrec", model, TrainConfig(), "vocab-g", {"valid_ndcg@10": 0.1}, "stream", [],
                           untrained=UNTRAINED)
    path = save_checkpoint(ckpt, tmp_path / "srm" / "srm.pt")
    vectors = save_item_vectors(tmp_path / "text.npz", text, {"vocab_hash": "vocab-g", "num_items": N,
                                                               "encoder": "minilm"})
    return path, vectors, text, text_map


def test_grounding_rewrites_only_the_untrained_rows(checkpoint, tmp_path):
    path, vectors, text, text_map = checkpoint
    before, parent = load_checkpoint(path)
    out, figures = ground_checkpoint(path, vectors, tmp_path / "grounded")
    after, ckpt = load_checkpoint(out)
    assert figures["grounded_items"] == len(UNTRAINED) and figures["grounding_heldout_r2"] > 0.99
    assert ckpt["untrained_items"] == ckpt["grounded_items"] == UNTRAINED  # candidates keep the neutral score
    assert ckpt["parent"] == parent["version"] != ckpt["version"]
    old, new = before.state_dict(), after.state_dict()
    for name in old:
        if name != "item_emb.weight":
            assert torch.equal(old[name], new[name]), name
    changed = np.flatnonzero((old["item_emb.weight"] != new["item_emb.weight"]).any(1).numpy())
    assert changed.tolist() == UNTRAINED
    truth = text[np.array(UNTRAINED) - 1] @ text_map  # what their rows would be had they been trained
    assert np.abs(new["item_emb.weight"][UNTRAINED].numpy() - truth).max() < 0.01 * np.abs(truth).max()
    manifest = read_manifest(export_checkpoint(out, ("onnx",), tmp_path / "export")["onnx"])
    assert manifest.untrained_items == tuple(UNTRAINED)  # the device gives them the neutral score as candidates


def test_bad_input_is_refused_and_nothing_is_written(checkpoint, tmp_path):
    path, _, text, _ = checkpoint
    other = save_item_vectors(tmp_path / "other.npz", text, {"vocab_hash": "another", "num_items": N})
    with pytest.raises(CatalogMismatchError):
        ground_checkpoint(path, other, tmp_path / "a")
    short = save_item_vectors(tmp_path / "short.npz", text[:-1], {"vocab_hash": "vocab-g", "num_items": N - 1})
    with pytest.raises(DataFormatError, match="vectors"):
        ground_checkpoint(path, short, tmp_path / "b")
    with pytest.raises(InvalidArgumentError, match="out"):
        ground_checkpoint(path, tmp_path / "text.npz", path)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    grounded, _ = ground_checkpoint(path, tmp_path / "text.npz", tmp_path / "c")
    with pytest.raises(InvalidArgumentError, match="nothing to ground"):
        ground_checkpoint(grounded, tmp_path / "text.npz", tmp_path / "d")


def test_the_command_writes_the_grounded_checkpoint(checkpoint, tmp_path, capsys):
    path, vectors, _, _ = checkpoint
    assert main(["train", "ground", "--ckpt", str(path.parent), "--vectors", str(vectors), "--out",
                 str(tmp_path / "g"), "--json"]) == 0
    assert '"grounded_items": 4' in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "g")[1]["grounded_items"] == UNTRAINED
    assert main(["train", "ground", "--ckpt", str(path), "--vectors", str(tmp_path / "missing.npz"), "--out",
                 str(tmp_path / "h")]) == 2
