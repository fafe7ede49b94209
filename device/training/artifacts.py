"""What training hands on, and how offline code reads it back: the SRM checkpoint (`srm.pt`) and the score
functions of an exported artifact (ONNX, ExecuTorch).

Training writes checkpoints, export reads them and checks its files' scores, evaluation scores both: they all
meet here, below training, so that none of them imports another. ONNX files run in the device runtime's own
session (device.runtime.backend.ort_session), so parity, golden scores and `eval srm --artifact` measure the
graph a device runs.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from device.runtime.backend import ort_session
from device.training.models import build_model
from shared.config import to_dict
from shared.errors import CatalogMismatchError, ConfigError, ManifestError
from shared.manifest import new_version, sha256_file
from shared.records import ModelFormat, ModelManifest
from shared.ranking import ScoreFn

CHECKPOINT_NAME = "srm.pt"
CHECKPOINT_FORMAT = "lsc4rec-srm/1"

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (history (B, T), candidates (B, C)) -> scores (B, C)


def make_checkpoint(model_name, model, config, vocab_hash: str, metrics: dict, protocol: str,
                    history: list, parent: str | None = None, cold: dict | None = None,
                    untrained: Sequence[int] = ()) -> dict:
    """State dict + model config + training config (a TrainConfig) + vocab hash + validation metrics (+ lineage).

    `cold_seed` and `cold_fraction` name protocol C's cold draw (None: the split had no cold items); checkpoints
    written before they existed lack the keys, and readers use .get. `untrained_items`: the ids no training
    sequence held (device.training.train.untrained_items), carried into the exported manifest.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model_name,
        "model_config": to_dict(model.config),
        "train_config": to_dict(config),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "vocab_hash": vocab_hash,
        "num_items": model.num_items,
        "protocol": protocol,
        "cold_seed": None if cold is None else int(cold["cold_seed"]),
        "cold_fraction": None if cold is None else float(cold["cold_fraction"]),
        "untrained_items": [int(i) for i in untrained],
        "metrics": {k: float(v) for k, v in metrics.items()},
        "history": history,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "parent": parent,
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Atomic write (temp file, then rename); the checkpoint's version is set from its bytes' sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({**ckpt, "version": ""}, tmp)
        ckpt["version"] = new_version(sha256_file(tmp))
        torch.save(ckpt, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, vocab_hash: str | None = None):
    """(model in eval mode, checkpoint dict); refuses another catalogue with CatalogMismatchError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("ckpt", str(path), "no such checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("ckpt", str(path), f"not an SRM checkpoint ({CHECKPOINT_FORMAT})")
    if vocab_hash is not None and ckpt["vocab_hash"] != vocab_hash:
        raise CatalogMismatchError(str(path), vocab_hash, ckpt["vocab_hash"])
    model = build_model(ckpt["model"], ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def onnx_runner(path: str | Path, threads: int = 1) -> Runner:
    """Scores of an ONNX file, in the session a device runs it in."""
    session = ort_session(path, threads)
    return lambda h, c: session.run(["scores"], {"history": np.ascontiguousarray(h),
                                                 "candidates": np.ascontiguousarray(c)})[0]


def pte_runner(path: str | Path) -> Runner:
    """Scores of an ExecuTorch program (executorch's bindings exchange torch tensors)."""
    from executorch.runtime import Runtime  # optional and heavy: only ExecuTorch artifacts need it

    method = Runtime.get().load_program(Path(path)).load_method("forward")
    return lambda h, c: method.execute([torch.from_numpy(np.ascontiguousarray(h)),
                                        torch.from_numpy(np.ascontiguousarray(c))])[0].numpy()


def catalogue_score_fn(run: Runner, num_items: int, rows: int | None = None, chunk: int | None = None) -> ScoreFn:
    """Full-catalogue scores (B, N + 1) from a runner, column 0 (padding) = -inf. An ExecuTorch program takes at
    most `rows` histories and `chunk` candidates per call (the bounds it planned memory for); None = all at once."""
    items = np.arange(1, num_items + 1, dtype=np.int64)
    chunk = chunk or num_items

    def score(history: np.ndarray) -> np.ndarray:
        step = rows or history.shape[0]
        blocks = []
        for r in range(0, history.shape[0], step):
            h = np.ascontiguousarray(history[r:r + step])
            parts = [np.full((h.shape[0], 1), -np.inf, dtype=np.float32)]
            for start in range(0, num_items, chunk):
                block = items[start:start + chunk]
                parts.append(run(h, np.ascontiguousarray(np.broadcast_to(block, (h.shape[0], len(block))))))
            blocks.append(np.concatenate(parts, axis=1))
        return np.concatenate(blocks, axis=0)
    return score


def artifact_score_fn(manifest: ModelManifest, path: Path) -> ScoreFn:
    """Full-catalogue scores of a verified artifact file (shared.manifest.verify_artifact), by its format."""
    if manifest.format == ModelFormat.ONNX:
        return catalogue_score_fn(onnx_runner(path), manifest.num_items)
    if manifest.format == ModelFormat.PTE:  # one user per call, candidates within the planned bound
        return catalogue_score_fn(pte_runner(path), manifest.num_items, rows=1,
                                  chunk=int(manifest.metrics.get("max_candidates", 256)))
    raise ManifestError(f"{path}: cannot score format {manifest.format}")  # pragma: no cover - two formats
