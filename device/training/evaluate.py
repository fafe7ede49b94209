"""Protocol A evaluation: full-catalogue ranking of an eager model or an exported artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from device.training.artifacts import artifact_score_fn
from shared.data.splits import Examples
from shared.errors import CatalogMismatchError
from shared.manifest import verify_artifact
from shared.metrics import DEFAULT_KS, summarize
from shared.ranking import ScoreFn, rank_examples


def model_score_fn(model) -> ScoreFn:
    """Full-catalogue scores from an eager torch model (eval mode, no grad)."""
    def score(history: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model.score_all(torch.from_numpy(np.ascontiguousarray(history))).numpy()
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
    manifest, path = verify_artifact(folder)
    if manifest.vocab_hash != vocab_hash:
        raise CatalogMismatchError(str(folder), vocab_hash, manifest.vocab_hash)
    figures = evaluate(artifact_score_fn(manifest, path), examples, manifest.history_length, ks, rules, batch_size=64)
    figures.update({"artifact": str(folder), "format": manifest.format.value, "version": manifest.version})
    return figures
