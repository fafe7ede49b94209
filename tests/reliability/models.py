"""Tiny SRM artifacts built with onnx.helper (no torch): a good one, and every kind of broken one.

The graph is the device contract: history (B, T) int64, candidates (B, C) int64 -> scores (B, C)
float32, the dot product of candidate embeddings with the summed history embedding. Building it
by hand lets a test choose the IR version, opset, input names, dtypes and shapes precisely.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shared.manifest import sha256_file, write_manifest
from shared.records import GoldenExample, ModelFormat, ModelManifest, TensorSpec

NUM_ITEMS = 200
HISTORY_LENGTH = 8
VOCAB_HASH = "vocab-reliability-200"
DIM = 8
OPSET = 17
IR_VERSION = 8


def embeddings(seed: int = 0) -> np.ndarray:
    """(N + 1, DIM) float32; row 0 (padding) is zero."""
    table = np.random.default_rng(seed).standard_normal((NUM_ITEMS + 1, DIM)).astype(np.float32)
    table[0] = 0.0
    return table


def reference_scores(history: np.ndarray, candidates: np.ndarray, seed: int = 0) -> np.ndarray:
    """What the good graph computes, in numpy: (B, C) float32."""
    table = embeddings(seed)
    user = table[history].sum(axis=1)  # (B, DIM)
    return np.einsum("bcd,bd->bc", table[candidates], user).astype(np.float32)


def build_model(seed: int = 0, ir_version: int = IR_VERSION, opset: int = OPSET, history_name: str = "history",
                history_dtype: int = TensorProto.INT64, history_length: int | str = HISTORY_LENGTH) -> onnx.ModelProto:
    """The scoring graph; arguments let a test break exactly one property."""
    table = numpy_helper.from_array(embeddings(seed), "emb")
    axes_t = numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_t")
    axes_d = numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_d")
    nodes = [
        helper.make_node("Cast", [history_name], ["hist64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["emb", "hist64"], ["h_emb"]),  # (B, T, D)
        helper.make_node("ReduceSum", ["h_emb", "axis_t"], ["user"], keepdims=1),  # (B, 1, D)
        helper.make_node("Gather", ["emb", "candidates"], ["c_emb"]),  # (B, C, D)
        helper.make_node("Mul", ["c_emb", "user"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axis_d"], ["scores"], keepdims=0),  # (B, C)
    ]
    graph = helper.make_graph(
        nodes, "tiny_srm",
        [helper.make_tensor_value_info(history_name, history_dtype, ["batch", history_length]),
         helper.make_tensor_value_info("candidates", TensorProto.INT64, ["batch", "num_candidates"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "num_candidates"])],
        initializer=[table, axes_t, axes_d])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="reliability")
    model.ir_version = ir_version
    return model


def golden(history_length: int = HISTORY_LENGTH) -> GoldenExample:
    """The good model's (seed 0) scores for one history against every item; re-signed mutants keep this record."""
    rng = np.random.default_rng(7)
    history = rng.integers(1, NUM_ITEMS + 1, size=(1, history_length))
    candidates = np.arange(1, NUM_ITEMS + 1)[None, :]
    scores = reference_scores(history, candidates)[0]
    return GoldenExample(tuple(int(i) for i in history[0]), tuple(int(i) for i in candidates[0]),
                         tuple(float(s) for s in scores))


def manifest_for(path: Path, version: str = "v1", history_length: int = HISTORY_LENGTH) -> ModelManifest:
    return ModelManifest(
        model_name="tiny", version=version, format=ModelFormat.ONNX, file_name=path.name,
        sha256=sha256_file(path), size_bytes=path.stat().st_size,
        inputs=(TensorSpec("history", "int64", ("batch", history_length)),
                TensorSpec("candidates", "int64", ("batch", "num_candidates"))),
        outputs=(TensorSpec("scores", "float32", ("batch", "num_candidates")),),
        history_length=history_length, num_items=NUM_ITEMS, vocab_hash=VOCAB_HASH,
        created_at="2026-01-01T00:00:00Z", golden=golden(history_length))


def write_model_bytes(folder: Path, data: bytes, version: str = "v1", sign: bool = True,
                      manifest: ModelManifest | None = None) -> Path:
    """`folder/model.onnx` = data, and a manifest: re-signed (sha256/size of `data`) or the given one."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(data)
    write_manifest(manifest_for(path, version) if sign or manifest is None else manifest, folder)
    return folder


def write_good(folder: Path, seed: int = 0, version: str = "v1") -> Path:
    return write_model_bytes(folder, build_model(seed).SerializeToString(), version)
