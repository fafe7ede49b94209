"""Fixtures for the device runtime tests: tiny SRM artifacts exported with torch (offline code only)."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from shared.manifest import sha256_file, write_manifest
from shared.records import ModelFormat, ModelManifest, TensorSpec

NUM_ITEMS = 30
HISTORY_LENGTH = 8
VOCAB_HASH = "vocab-test-30"


def _tiny_module(num_items: int, seed: int = 0):
    import torch

    class Tiny(torch.nn.Module):
        """Mean-pooled history embedding dotted with candidate embeddings."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(num_items + 1, 8, padding_idx=0)

        def forward(self, history, candidates):  # (B, T) int64, (B, C) int64 -> (B, C) float32
            h = self.emb(history).sum(dim=1)  # (B, d); padding rows are zero
            return (self.emb(candidates) * h.unsqueeze(1)).sum(-1)

    torch.manual_seed(seed)
    return Tiny().eval()


def write_artifact(folder: Path, fmt: ModelFormat = ModelFormat.ONNX, num_items: int = NUM_ITEMS,
                   history_length: int = HISTORY_LENGTH, vocab_hash: str = VOCAB_HASH, seed: int = 0,
                   version: str = "v1") -> Path:
    """Export the tiny model to `folder` with a manifest.json; returns the folder."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model = _tiny_module(num_items, seed)
    history = torch.randint(1, num_items + 1, (2, history_length))
    candidates = torch.randint(1, num_items + 1, (2, 7))
    if fmt == ModelFormat.ONNX:
        name = "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (history, candidates), str(folder / name), input_names=["history", "candidates"],
                              output_names=["scores"], dynamo=False,
                              dynamic_axes={"history": {0: "batch"}, "candidates": {0: "batch", 1: "num_candidates"},
                                            "scores": {0: "batch", 1: "num_candidates"}})
    else:
        from executorch.exir import to_edge_transform_and_lower
        from torch.export import Dim, export

        name = "model.pte"
        batch = Dim("batch", max=64)
        program = export(model, (history, candidates), dynamic_shapes={
            "history": {0: batch}, "candidates": {0: batch, 1: Dim("num_candidates", min=1, max=256)}})
        (folder / name).write_bytes(to_edge_transform_and_lower(program).to_executorch().buffer)
    manifest = ModelManifest(
        model_name="tiny", version=version, format=fmt, file_name=name, sha256=sha256_file(folder / name),
        size_bytes=(folder / name).stat().st_size,
        inputs=(TensorSpec("history", "int64", ("batch", history_length)),
                TensorSpec("candidates", "int64", ("batch", "num_candidates"))),
        outputs=(TensorSpec("scores", "float32", ("batch", "num_candidates")),),
        history_length=history_length, num_items=num_items, vocab_hash=vocab_hash, created_at="2026-01-01T00:00:00Z")
    write_manifest(manifest, folder)
    return folder


def reference_scores(histories: np.ndarray, candidates: np.ndarray, seed: int = 0) -> np.ndarray:
    """The eager torch model's scores (parity check)."""
    import torch

    with torch.no_grad():
        return _tiny_module(NUM_ITEMS, seed)(torch.from_numpy(histories), torch.from_numpy(candidates)).numpy()


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("srm") / "onnx")


@pytest.fixture(scope="session")
def onnx_dir_v2(tmp_path_factory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("srm2") / "onnx", seed=1, version="v2")


@pytest.fixture
def model_copy(onnx_dir, tmp_path) -> Path:
    """A writable copy of the ONNX artifact folder (for corruption tests)."""
    return Path(shutil.copytree(onnx_dir, tmp_path / "model"))
