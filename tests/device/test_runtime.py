"""Verified loading, scoring parity and bad input of the SRM runtime backends; atomic model updates."""
import dataclasses
import json

import numpy as np
import pytest

from device.runtime.artifact import ModelHolder, load_reranker
from device.runtime.backend import OnnxReranker
from shared.errors import CatalogMismatchError, InvalidArgumentError, ManifestError, UnknownItemError
from shared.manifest import MANIFEST_NAME, read_manifest
from shared.records import ModelFormat
from tests.device.conftest import HISTORY_LENGTH, NUM_ITEMS, VOCAB_HASH, reference_scores, write_artifact


def _inputs(batch=3, cands=50, seed=0):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, NUM_ITEMS + 1, (batch, HISTORY_LENGTH))
    cand = rng.integers(1, NUM_ITEMS + 1, (batch, cands))
    return hist, cand


def test_onnx_scores_match_eager_torch(onnx_dir):
    reranker = load_reranker(onnx_dir, vocab_hash=VOCAB_HASH)
    assert isinstance(reranker, OnnxReranker)
    assert reranker.history_length == HISTORY_LENGTH and reranker.manifest.num_items == NUM_ITEMS
    hist, cand = _inputs()
    out = reranker.score(hist, cand)
    assert out.dtype == np.float32 and out.shape == (3, 50)
    assert np.allclose(out, reference_scores(hist, cand), atol=1e-5)


def test_unknown_ids_and_bad_shapes_raise_before_inference(onnx_dir):
    reranker = load_reranker(onnx_dir)
    hist, cand = _inputs(batch=1)
    with pytest.raises(UnknownItemError):
        reranker.score(hist, np.array([[1, NUM_ITEMS + 1]]))
    with pytest.raises(UnknownItemError):
        reranker.score(hist, np.array([[0, 2]]))  # padding is not a candidate
    bad_hist = hist.copy()
    bad_hist[0, 0] = -1
    with pytest.raises(UnknownItemError):
        reranker.score(bad_hist, cand)
    with pytest.raises(InvalidArgumentError):
        reranker.score(hist[:, 1:], cand)  # wrong history length
    with pytest.raises(InvalidArgumentError):
        reranker.score(hist, cand[:, :0])  # no candidates


def test_vocab_hash_mismatch_is_refused(onnx_dir):
    with pytest.raises(CatalogMismatchError):
        load_reranker(onnx_dir, vocab_hash="another-catalogue")


def test_corrupt_artifact_is_refused(model_copy):
    path = model_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        load_reranker(model_copy)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ManifestError, match="size"):
        load_reranker(model_copy)


def _edit_manifest(folder, **changes):
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("changes, match", [
    ({"inputs": [{"name": "hist", "dtype": "int64", "shape": ["batch", HISTORY_LENGTH]},
                 {"name": "candidates", "dtype": "int64", "shape": ["batch", "n"]}]}, "hist"),
    ({"inputs": [{"name": "history", "dtype": "int64", "shape": ["batch", HISTORY_LENGTH]},
                 {"name": "candidates", "dtype": "int64", "shape": ["batch", 50]}]}, "dynamic"),
    ({"history_length": HISTORY_LENGTH + 1}, "history_length"),
    ({"outputs": [{"name": "scores", "dtype": "float64", "shape": ["batch", "n"]}]}, "float32"),
    ({"format": "pte"}, "pte"),
])
def test_manifest_that_disagrees_with_the_graph_is_refused(model_copy, changes, match):
    _edit_manifest(model_copy, **changes)
    with pytest.raises(ManifestError, match=match):
        load_reranker(model_copy, backend="onnx")


def test_graph_history_length_mismatch_is_refused(model_copy):
    _edit_manifest(model_copy, history_length=HISTORY_LENGTH + 2,
                   inputs=[{"name": "history", "dtype": "int64", "shape": ["batch", HISTORY_LENGTH + 2]},
                           {"name": "candidates", "dtype": "int64", "shape": ["batch", "n"]}])
    with pytest.raises(ManifestError, match="axis 1"):
        load_reranker(model_copy)


def test_missing_or_garbage_manifest(model_copy):
    (model_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError):
        load_reranker(model_copy)
    (model_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError):
        load_reranker(model_copy)


def _source(folder):
    manifest = read_manifest(folder)
    data = (folder / manifest.file_name).read_bytes()
    return manifest, data


def test_model_holder_updates_atomically(onnx_dir, onnx_dir_v2, tmp_path):
    holder = ModelHolder(load_reranker(onnx_dir), tmp_path / "models")
    manifest, data = _source(onnx_dir_v2)
    hist, cand = _inputs(batch=1)
    before = holder.score(hist, cand)
    result = holder.check_for_update(lambda current: manifest, lambda m: [data[:100], data[100:]])
    assert result.status == "updated" and result.version == "v2"
    assert holder.manifest.version == "v2"
    assert np.allclose(holder.score(hist, cand), reference_scores(hist, cand, seed=1), atol=1e-5)
    assert not np.allclose(before, holder.score(hist, cand))
    assert (tmp_path / "models" / "v2" / "model.onnx").is_file()
    again = holder.check_for_update(lambda current: manifest if current != "v2" else None, lambda m: [data])
    assert again.status == "current"


def test_model_holder_keeps_current_model_when_download_fails_verification(onnx_dir, onnx_dir_v2, tmp_path):
    holder = ModelHolder(load_reranker(onnx_dir), tmp_path / "models")
    manifest, data = _source(onnx_dir_v2)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    result = holder.check_for_update(lambda current: manifest, lambda m: [bytes(corrupt)])
    assert result.status == "rejected" and "sha256" in result.reason
    assert holder.manifest.version == "v1"
    assert not (tmp_path / "models" / "v2").exists()
    assert list((tmp_path / "models").iterdir()) == []  # staging removed
    other = dataclasses.replace(manifest, vocab_hash="another")
    result = holder.check_for_update(lambda current: other, lambda m: [data])
    assert result.status == "rejected" and holder.manifest.version == "v1"


def test_model_holder_rejects_unsafe_version_names(onnx_dir, onnx_dir_v2, tmp_path):
    holder = ModelHolder(load_reranker(onnx_dir), tmp_path / "models")
    manifest, data = _source(onnx_dir_v2)
    evil = dataclasses.replace(manifest, version="../escape")
    assert holder.check_for_update(lambda current: evil, lambda m: [data]).status == "rejected"
    assert holder.manifest.version == "v1"


@pytest.mark.slow  # the .pte export takes 10-25 s on 2 shared cores
def test_executorch_backend_matches_onnx(tmp_path_factory, onnx_dir):
    pytest.importorskip("executorch.runtime")
    folder = write_artifact(tmp_path_factory.mktemp("pte") / "pte", fmt=ModelFormat.PTE)
    reranker = load_reranker(folder, backend="executorch")
    hist, cand = _inputs(batch=2, cands=50)
    assert np.allclose(reranker.score(hist, cand), load_reranker(onnx_dir).score(hist, cand), atol=1e-5)
    with pytest.raises(UnknownItemError):
        reranker.score(hist, np.full((2, 3), NUM_ITEMS + 5))


class _FakeClient:
    """The two CloudClient methods ModelHolder.update_from_cloud uses."""

    def __init__(self, folder, vocab_hash=None):
        import shutil

        self.folder, self.vocab_hash, self.shutil = folder, vocab_hash, shutil

    def latest_manifest(self, fmt, current_version, kind="scorer"):
        manifest = read_manifest(self.folder)
        if self.vocab_hash:
            manifest = dataclasses.replace(manifest, vocab_hash=self.vocab_hash)
        return manifest, manifest.version != current_version

    def download(self, manifest, dest):
        from shared.manifest import write_manifest

        final = dest / f"onnx-{manifest.version}"
        self.shutil.copytree(self.folder, final)
        write_manifest(manifest, final)
        return final


def test_model_holder_update_from_cloud(onnx_dir, onnx_dir_v2, tmp_path):
    holder = ModelHolder(load_reranker(onnx_dir), tmp_path / "models")
    rejected = holder.update_from_cloud(_FakeClient(onnx_dir_v2, vocab_hash="another-catalogue"))
    assert rejected.status == "rejected" and "vocab hash" in rejected.reason
    assert holder.manifest.version == "v1" and not (tmp_path / "models" / "onnx-v2").exists()
    assert holder.update_from_cloud(_FakeClient(onnx_dir_v2)).status == "updated"
    assert holder.manifest.version == "v2"
    assert holder.update_from_cloud(_FakeClient(onnx_dir_v2)).status == "current"


def test_trusted_scoring_skips_only_the_input_checks(onnx_dir, onnx_dir_v2, tmp_path):
    reranker = load_reranker(onnx_dir)
    hist, cand = _inputs(batch=2)
    hist, cand = np.ascontiguousarray(hist, dtype=np.int64), np.ascontiguousarray(cand, dtype=np.int64)
    assert np.array_equal(reranker.score_trusted(hist, cand), reranker.score(hist, cand))
    holder = ModelHolder(reranker, tmp_path / "models")
    assert np.array_equal(holder.score_trusted(hist, cand), reranker.score(hist, cand))
    manifest, data = _source(onnx_dir_v2)
    assert holder.check_for_update(lambda current: manifest, lambda m: [data]).status == "updated"
    assert np.array_equal(holder.score_trusted(hist, cand), holder.current.score(hist, cand))
    assert not np.array_equal(holder.score_trusted(hist, cand), reranker.score(hist, cand))
