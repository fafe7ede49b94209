"""Ground the items an SRM never trained on in their text (`lsc4rec train ground`).

An item that no training sequence held keeps its random initial row of the item table: the model's score for it
only says "never seen", so the device gives it a neutral score (device/runtime/fusion.py) and the cloud's score
alone places it. With a text vector for every item (`lsc4rec embed items`), a linear map from text to the SRM's item
space, fitted on the items it did train on, gives each untrained item a row near the trained items whose text is
like its own. A history that holds such an item is then encoded with that row instead of noise. As a candidate the
item keeps its neutral score: scored with its grounded row it ranked no better on the validation world (ridge
shrinks rows towards the mean, and the list's other items are the cloud's best guesses), so the checkpoint keeps
it in `untrained_items` and lists it in `grounded_items` too.

The map is ridge regression, its strength chosen by 5-fold cross-validation on the trained items (no evaluation
data is read); the held-out R² of the chosen strength is recorded. The grounded checkpoint is a new version with
the original as its parent; every other parameter is unchanged bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from device.training.artifacts import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from shared.errors import InvalidArgumentError
from shared.item_vectors import read_catalogue_vectors

STRENGTHS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried (on vectors centred, not scaled)
FOLDS = 5


@dataclass(frozen=True)
class Grounding:
    """A ridge map text vector -> item row: `project(text)` = (text - text_mean) @ weights + row_mean."""

    weights: np.ndarray  # (text dim, row dim)
    text_mean: np.ndarray
    row_mean: np.ndarray
    strength: float
    heldout_r2: float  # of the chosen strength, 5-fold over the trained items

    def project(self, text: np.ndarray) -> np.ndarray:
        return (np.asarray(text, dtype=np.float64) - self.text_mean) @ self.weights + self.row_mean


def _ridge(text: np.ndarray, rows: np.ndarray, strength: float) -> Grounding:
    text_mean, row_mean = text.mean(0), rows.mean(0)
    x = text - text_mean
    weights = np.linalg.solve(x.T @ x + strength * np.eye(x.shape[1]), x.T @ (rows - row_mean))
    return Grounding(weights, text_mean, row_mean, strength, float("nan"))


def fit_grounding(text: np.ndarray, rows: np.ndarray, seed: int = 0) -> Grounding:
    """The ridge map from `text` (M, t) to `rows` (M, d) of the same M trained items, strength by held-out R²."""
    text, rows = np.asarray(text, dtype=np.float64), np.asarray(rows, dtype=np.float64)
    if len(text) < 2 * FOLDS:
        raise InvalidArgumentError("trained items", len(text), f"at least {2 * FOLDS} are needed to fit a map")
    folds = np.random.default_rng(seed).permutation(len(text)) % FOLDS
    total = ((rows - rows.mean(0)) ** 2).sum()
    best: tuple[float, float] | None = None
    for strength in STRENGTHS:
        error = 0.0
        for fold in range(FOLDS):
            fit = _ridge(text[folds != fold], rows[folds != fold], strength)
            error += ((fit.project(text[folds == fold]) - rows[folds == fold]) ** 2).sum()
        r2 = 1.0 - error / total
        if best is None or r2 > best[1]:
            best = (strength, r2)
    return replace(_ridge(text, rows, best[0]), heldout_r2=float(best[1]))


def ground_checkpoint(ckpt_path: str | Path, vectors_path: str | Path, out: str | Path, seed: int = 0) -> tuple[Path, dict]:
    """Write a grounded copy of the checkpoint to `out` (a folder, OUT/srm.pt, or a .pt path); (path, figures)."""
    out = Path(out)
    out = out if out.suffix == ".pt" else out / CHECKPOINT_NAME
    source = Path(ckpt_path) / CHECKPOINT_NAME if Path(ckpt_path).is_dir() else Path(ckpt_path)
    if out.resolve() == source.resolve():
        raise InvalidArgumentError("out", str(out), "is the checkpoint being grounded; write the grounded one elsewhere")
    model, ckpt = load_checkpoint(ckpt_path)
    try:
        table = model.item_table()
    except (AttributeError, ValueError) as exc:
        raise InvalidArgumentError("ckpt", str(ckpt_path), f"has no single item table to ground ({exc})") from None
    untrained = np.setdiff1d(np.asarray(ckpt.get("untrained_items", ()), dtype=np.int64), ckpt.get("grounded_items", ()))
    if untrained.size == 0:
        raise InvalidArgumentError("ckpt", str(ckpt_path), "lists no untrained item that is not grounded yet: there "
                                                           "is nothing to ground")
    text, meta = read_catalogue_vectors(vectors_path, ckpt["vocab_hash"], model.num_items)
    trained = np.setdiff1d(np.arange(1, model.num_items + 1), untrained)
    with torch.no_grad():
        rows = table.detach().double().numpy()
        grounding = fit_grounding(text[trained - 1], rows[trained], seed)
        table[torch.from_numpy(untrained)] = torch.from_numpy(grounding.project(text[untrained - 1])).to(table.dtype)
    figures = {"grounded_items": int(untrained.size), "grounding_strength": grounding.strength,
               "grounding_heldout_r2": grounding.heldout_r2}
    grounded = {**ckpt, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "grounded_items": sorted({*ckpt.get("grounded_items", ()), *(int(i) for i in untrained)}),
                "grounding": {"vectors": str(vectors_path), "encoder": meta.get("encoder"), **figures},
                "metrics": {**ckpt["metrics"], **figures}, "parent": ckpt.get("version")}
    path = save_checkpoint(grounded, out)
    return path, {**figures, "version": grounded["version"], "parent": ckpt.get("version")}
