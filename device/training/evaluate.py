"""Protocol A evaluation: full-catalogue ranking of an eager model or an exported artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.data.splits import Examples
from shared.metrics import DEFAULT_KS, summarize
from shared.ranking import ScoreFn, rank_examples


def model_score_fn(model) -> ScoreFn:
    """Full-catalogue scores from an eager torch model (eval mode, no grad)."""
    import torch

    def score(history: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model.score_all(torch.from_numpy(np.ascontiguousarray(history))).numpy()
    return score


def onnx_score_fn(path: str | Path, num_items: int, threads: int = 1) -> ScoreFn:
    """Full-catalogue scores through onnxruntime: candidates = every item 1..N."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    items = np.arange(1, num_items + 1, dtype=np.int64)

    def score(history: np.ndarray) -> np.ndarray:
        cands = np.ascontiguousarray(np.broadcast_to(items, (history.shape[0], num_items)))
        out = session.run(["scores"], {"history": history, "candidates": cands})[0]
        return np.concatenate([np.full((history.shape[0], 1), -np.inf, dtype=np.float32), out], axis=1)
    return score


def evaluate(score_fn: ScoreFn, examples: Examples, max_len: int, ks=DEFAULT_KS,
             rules: tuple[str, ...] = ("removed", "kept"), batch_size: int = 256) -> dict:
    """Figures under each rule for seen items: "removed" (protocol A) and "kept" (RecBole's rule)."""
    figures: dict = {"users": len(examples)}
    for rule in rules:
        ranks = rank_examples(score_fn, examples, max_len, remove_seen=(rule == "removed"),
                              batch_size=batch_size)
        prefix = "" if rule == "removed" else "seen_kept/"
        figures.update({prefix + k: v for k, v in summarize(ranks, ks).items()})
    return figures


def evaluate_artifact(folder: str | Path, examples: Examples, vocab_hash: str, ks=DEFAULT_KS,
                      rules: tuple[str, ...] = ("removed", "kept")) -> dict:
    """Verify an exported folder (manifest, size, sha256, catalogue) and evaluate it through its runtime."""
    from shared.errors import CatalogMismatchError, ManifestError
    from shared.manifest import verify_artifact
    from shared.records import ModelFormat

    manifest, path = verify_artifact(folder)
    if manifest.vocab_hash != vocab_hash:
        raise CatalogMismatchError(str(folder), vocab_hash, manifest.vocab_hash)
    if manifest.format == ModelFormat.ONNX:
        score_fn = onnx_score_fn(path, manifest.num_items)
    elif manifest.format == ModelFormat.PTE:
        from device.training.export import pte_score_fn

        score_fn = pte_score_fn(path, manifest.num_items, chunk=int(manifest.metrics.get("max_candidates", 256)))
    else:  # pragma: no cover - ModelFormat has two members
        raise ManifestError(f"{folder}: cannot evaluate format {manifest.format}")
    figures = evaluate(score_fn, examples, manifest.history_length, ks, rules, batch_size=64)
    figures.update({"artifact": str(folder), "format": manifest.format.value, "version": manifest.version})
    return figures
