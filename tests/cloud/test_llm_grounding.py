"""Text-grounded item tokens: the table is proj(text) + id residual, served by the plain model, and it reaches cold items."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cloud.llm import load_generator
from cloud.llm.evaluate import ranks_for
from cloud.llm.grounding import GROUNDING_NAME
from cloud.llm.train import cloud_split, load_llm_config, train
from shared.data.cold import cold_world, draw_cold_items
from shared.data.dataset import write_dataset
from shared.errors import ConfigError
from simulator.cli import main
from tests.cloud.tiny_lm import tiny_lm_folder
from tests.conftest import synthetic_dataset

TINY = ["train.threads=1", "model.max_history=10", "train.window_stride=3"]


def ring_vectors(num_items: int) -> np.ndarray:
    """Text stand-ins that know the ring the synthetic users walk: item i's angle, a few harmonics."""
    angle = 2 * np.pi * np.arange(num_items) / num_items
    return np.stack([f(h * angle) for h in (1, 2, 3, 5) for f in (np.cos, np.sin)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    ds = synthetic_dataset()
    out = tmp_path_factory.mktemp("llm") / "text"
    config = load_llm_config("tiny", overrides=TINY + ["model.grounding=text", "train.protocol=cold",
                                                       "train.epochs=3"])
    generator, metrics = train(ds, config, out=out, item_vectors=ring_vectors(ds.num_items), progress=False)
    return ds, out, generator, metrics, config


def test_the_served_token_table_is_the_grounding_and_cold_items_have_no_residual(grounded):
    ds, out, generator, metrics, config = grounded
    saved = np.load(out / GROUNDING_NAME)
    cold = draw_cold_items(ds.num_items, 0.1, 0)
    assert not saved["trained"][cold - 1].any() and saved["trained"].sum() == ds.num_items - len(cold)
    table = load_generator(out, ds).model.get_input_embeddings().weight.detach().numpy()  # (V, H)
    from_text = saved["vectors"] @ saved["proj"]  # (N, H): what the text alone gives
    assert np.allclose(table[3:][cold - 1], from_text[cold - 1], atol=1e-5)  # cold rows: text only
    warm = np.flatnonzero(saved["trained"])
    assert not np.allclose(table[3:][warm], from_text[warm], atol=1e-3)  # warm rows also carry their residual
    assert metrics["grounding"] == "text"


def test_text_grounding_ranks_cold_targets_that_an_id_only_model_cannot():
    ds = synthetic_dataset(num_users=60)
    world = cold_world(ds, "cold", 0.1, 0)
    cold_rows = np.isin(world.examples.targets, world.cold)
    assert cold_rows.sum() >= 3
    hits = {}
    for grounding in ("id", "text"):
        config = load_llm_config("tiny", overrides=TINY + [f"model.grounding={grounding}", "train.protocol=cold",
                                                           "train.epochs=15", "train.patience=15"])
        generator, _ = train(ds, config, item_vectors=ring_vectors(ds.num_items), progress=False)
        ranks = ranks_for(generator, world.examples, n=10)
        hits[grounding] = float(((ranks >= 0) & cold_rows).sum())
    assert hits["id"] == 0.0  # an item no sequence holds is never generated from its id alone
    assert hits["text"] >= 2.0


def test_a_truncated_pretrained_model_trains_on_grounded_items_and_serves(tmp_path):
    ds = synthetic_dataset()
    lm = tiny_lm_folder(tmp_path / "lm", ["a b c"], hidden=32, layers=3)
    config = load_llm_config("folder", overrides=TINY + [f"model.folder={lm}", "model.layers=2",
                                                         "model.grounding=text", "train.epochs=1"])
    generator, _ = train(ds, config, out=tmp_path / "run", item_vectors=ring_vectors(ds.num_items), progress=False)
    assert generator.model.config.num_hidden_layers == 2 and len(generator.model.model.layers) == 2
    loaded = load_generator(tmp_path / "run", ds)
    history = list(ds.sequences()[0][:6])
    assert [c.item for c in loaded.generate([history], 5)[0]] == [c.item for c in generator.generate([history], 5)[0]]


def test_grounding_without_vectors_or_with_semantic_ids_is_refused():
    ds = synthetic_dataset()
    with pytest.raises(ConfigError, match="--vectors"):
        train(ds, load_llm_config("compact-text", overrides=TINY), progress=False)
    config = load_llm_config("tiny", overrides=TINY + ["model.grounding=text", "tokenizer.kind=semantic"])
    with pytest.raises(ConfigError, match="atomic"):
        train(ds, config, item_vectors=ring_vectors(ds.num_items), embeddings=ring_vectors(ds.num_items),
              progress=False)


def test_cold_training_never_sees_a_cold_item():
    ds = synthetic_dataset()
    for protocol in ("cold", "cold-stream"):
        config = load_llm_config("tiny", overrides=[f"train.protocol={protocol}", "train.cold_seed=4"])
        split = cloud_split(ds, config.train)
        cold = draw_cold_items(ds.num_items, 0.1, 4)
        assert not any(np.isin(seq, cold).any() for seq in split.train)
        assert not np.isin(split.valid.targets, cold).any()


def test_eval_llm_cold_prints_slices_and_refuses_another_draw(grounded, tmp_path, capsys):
    ds, out, _, _, _ = grounded
    data = write_dataset(ds, tmp_path / "data")
    assert main(["eval", "llm", "--data", str(data), "--model", str(out), "--protocol", "cold", "--json",
                 "--threads", "1"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("cold/hr@10", "cold/ndcg@10", "cold/recall@50", "tail/hr@10", "warm/ndcg@10", "users", "cold_items",
                "seed"):
        assert key in figures, key
    assert figures["seed"] == 0 and figures["cold_items"] == 6
    assert main(["eval", "llm", "--data", str(data), "--model", str(out), "--protocol", "cold", "--seed", "1"]) == 2
    assert "cold_seed = 0" in capsys.readouterr().err
    assert main(["eval", "llm", "--data", str(data), "--model", str(out), "--protocol", "cold-stream"]) == 2


def test_the_cold_boost_lifts_only_the_items_no_training_interaction_taught(grounded, tmp_path):
    ds, out, _, _, _ = grounded
    cold = set(draw_cold_items(ds.num_items, 0.1, 0).tolist())
    history = list(map(int, ds.sequences()[0][:8]))
    plain = load_generator(out, ds, cold_boost=0.0).generate([history], 10)[0]
    boosted = load_generator(out, ds, cold_boost=100.0).generate([history], 10)[0]
    unseen = cold - set(history)
    assert {c.item for c in boosted[:len(unseen)]} == unseen  # a huge bonus puts every cold item first
    assert boosted[0].score > 0 > plain[0].score  # the bonus is added to the log-probability the device fuses
    default = load_generator(out, ds).generate([history], 10)[0]  # the folder's model.cold_boost (2.0)
    assert [c.item for c in default] == [c.item for c in load_generator(out, ds, cold_boost=2.0).generate([history], 10)[0]]


def test_frozen_blocks_stay_pretrained_while_the_item_table_learns(tmp_path):
    ds = synthetic_dataset()
    lm = tiny_lm_folder(tmp_path / "lm", ["a b c"], hidden=32, layers=2)
    config = load_llm_config("folder", overrides=TINY + [f"model.folder={lm}", "model.grounding=text",
                                                         "train.epochs=1", "train.freeze_blocks=true"])
    generator, _ = train(ds, config, item_vectors=ring_vectors(ds.num_items), progress=False)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(lm).model.layers[0].mlp.up_proj.weight
    assert torch.equal(generator.model.model.layers[0].mlp.up_proj.weight, before)
    with pytest.raises(ConfigError, match="freeze_blocks"):
        train(ds, load_llm_config("tiny", overrides=TINY + ["train.freeze_blocks=true"]), progress=False)
