"""Training, saving, loading and the CLI of the cloud LM, on tiny seeded configs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cloud.llm import load_generator
from cloud.llm.train import cloud_split, load_llm_config, train, windows
from shared.data.dataset import write_dataset
from shared.data.splits import stream_split
from shared.errors import CatalogMismatchError, ConfigError, ManifestError
from tests.conftest import REPO, synthetic_dataset

TINY = ["train.epochs=2", "train.threads=1", "model.max_history=10", "tokenizer.levels=2",
        "tokenizer.codebook_size=4"]


def _embeddings(ds):
    return np.random.default_rng(0).normal(size=(ds.num_items, 8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ds = synthetic_dataset()
    out = tmp_path_factory.mktemp("llm") / "run"
    config = load_llm_config("tiny", overrides=TINY + ["tokenizer.kind=semantic"])
    generator, metrics = train(ds, config, out=out, embeddings=_embeddings(ds), progress=False)
    return ds, out, generator, metrics


def test_training_writes_a_loadable_folder(trained):
    ds, out, generator, metrics = trained
    for name in ("model/config.json", "item_index.json", "config.json", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["vocab_hash"] == ds.vocab_hash and saved["tokenizer"]["kind"] == "semantic"
    assert saved["train"]["protocol"] == "stream" and saved["version"] == generator.version
    assert 1 <= metrics["epochs_run"] <= 2 and np.isfinite(metrics["history"][0]["loss"])
    loaded = load_generator(out, ds)
    assert loaded.max_history == 10 and loaded.version == generator.version
    history = list(ds.sequences()[0][:5])
    a, b = generator.generate([history], 10)[0], loaded.generate([history], 10)[0]
    assert [c.item for c in a] == [c.item for c in b]
    assert np.allclose([c.score for c in a], [c.score for c in b], atol=1e-4)


def test_loading_against_another_catalogue_is_refused(trained):
    _, out, _, _ = trained
    with pytest.raises(CatalogMismatchError):
        load_generator(out, synthetic_dataset(num_items=61))


def test_loading_a_folder_without_an_index_is_refused(tmp_path):
    with pytest.raises(ManifestError):
        load_generator(tmp_path, synthetic_dataset())


def test_same_seed_same_model_and_training_lowers_the_loss():
    ds = synthetic_dataset()
    config = load_llm_config("tiny", overrides=TINY + ["train.epochs=3", "train.patience=3", "train.lr=0.01"])
    g1, m1 = train(ds, config, progress=False)
    g2, m2 = train(ds, config, progress=False)
    assert [h["loss"] for h in m1["history"]] == [h["loss"] for h in m2["history"]]
    assert m1["history"][-1]["loss"] < m1["history"][0]["loss"]
    rows = [[c.item for c in r] for r in g1.generate([[1, 2, 3], []], 5)]
    assert rows == [[c.item for c in r] for r in g2.generate([[1, 2, 3], []], 5)]


def test_default_split_is_the_stream_cloud_split_and_never_sees_stream_items():
    ds = synthetic_dataset()
    config = load_llm_config("tiny")
    split = cloud_split(ds, config.train)
    stream = stream_split(ds)
    for user, prefix in zip(split.users, split.train):
        seq = ds.sequences()[user - 1]
        assert len(prefix) <= len(seq) - stream.stream_length - stream.cloud_lag - 1
        assert np.array_equal(prefix, seq[: len(prefix)])


def test_windows_cover_every_item_as_a_target_once():
    seq = np.arange(1, 24)
    out = windows([seq], max_history=5, stride=5)
    assert all(len(w) <= 6 for w in out)
    targets = np.concatenate([w[1:] for w in out])
    assert sorted(set(targets.tolist())) == list(range(2, 24))


@pytest.mark.parametrize("override,key", [("train.protocol=live", "train.protocol"),
                                          ("model.bogus=1", "model.bogus"),
                                          ("model.hidden=33", "model.hidden")])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_llm_config("tiny", overrides=[override])


def test_preset_values_yield_to_the_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nhidden = 48\nheads = 4\n")
    config = load_llm_config("tiny", path, ["model.layers=3"])
    assert (config.model.hidden, config.model.heads, config.model.layers, config.model.intermediate) == (48, 4, 3, 64)


def test_cli_train_then_eval(tmp_path, capsys):
    from simulator.cli import main

    data = write_dataset(synthetic_dataset(num_items=40), tmp_path / "data")
    out = tmp_path / "model"
    assert main(["train", "llm", "--data", str(data), "--preset", "tiny", "--out", str(out), "--seed", "3",
                 "--protocol", "loo", "--json"] + sum((["--set", s] for s in TINY), [])) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["seed"] == 3 and trained["protocol"] == "loo"
    assert main(["eval", "llm", "--data", str(data), "--model", str(out), "--protocol", "loo", "--json",
                 "--threads", "1"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("hr@10", "ndcg@10", "mrr@10", "hr@5", "ndcg@20", "recall@50", "users", "seed", "protocol"):
        assert key in figures, key
    assert figures["users"] == 40 and figures["seed"] == 3 and 0.0 <= figures["ndcg@10"] <= figures["hr@10"] <= 1.0


@pytest.mark.slow
def test_smollm2_blocks_are_kept_truncated_with_an_item_vocabulary():
    from cloud.llm.model import ModelConfig, build_model

    model = build_model(ModelConfig(preset="smollm2-135m", layers=3), vocab_size=100, depth=1)
    assert model.get_input_embeddings().weight.shape == (100, 576)
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3


def test_the_preset_flag_wins_over_the_file_preset(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\npreset = "compact"\nlayers = 3\n')
    config = load_llm_config("tiny", path)
    assert (config.model.preset, config.model.hidden, config.model.layers) == ("tiny", 32, 3)
    assert load_llm_config(None, path).model.preset == "compact"


def test_time_budget_stops_after_the_epoch_that_passes_it():
    ds = synthetic_dataset()
    config = load_llm_config("tiny", overrides=TINY + ["train.epochs=5", "train.max_minutes=1e-6"])
    _, metrics = train(ds, config, progress=False)
    assert metrics["epochs_run"] == 1 and metrics["stopped_by"] == "max_minutes"


def test_cloud_serve_starts_the_llm_quietly(trained, tmp_path):
    """`cloud serve --llm` logs its own lines only: torchao's and torch pytree's start-up warnings are silenced."""
    ds, out, _, _ = trained
    data = write_dataset(ds, tmp_path / "data")
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "cloud", "serve", "--llm", str(out), "--data", str(data),
         "--address", "127.0.0.1:0", "--port-file", str(port_file)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0 and port_file.exists(), stderr
    assert "lsc4rec.cloud: generator" in stderr and "ready" in stderr and stdout == ""  # our own lines, on stderr
    assert "torchao" not in stderr and "_pytree" not in stderr and "Triton" not in stderr, stderr
