"""Non-learned baselines as full-catalogue score functions (popularity, text nearest neighbour), and `eval baseline`.

A score function maps histories (a list of item-id arrays, or a (B, T) array left-padded with 0) to (B, N + 1)
float scores, column 0 (padding) = -inf, like device.training.evaluate's model score functions, so the same ranking rule
(shared.ranking.rank_examples) judges models and baselines.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from shared.cli import emit
from shared.data.cold import PROTOCOLS, cold_world
from shared.data.dataset import load_dataset
from shared.errors import ConfigError
from shared.item_vectors import load_item_vectors
from shared.ranking import ScoreFn, rank_examples
from shared.sequences import pad_left

KINDS = ("popularity", "text-knn")


def _as_padded(histories: np.ndarray | Sequence[Sequence[int]], length: int) -> np.ndarray:
    """(B, length) int64, each row's most recent items left-padded with 0, from a list or a padded (B, T) array."""
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        histories = [row[row > 0] for row in histories]  # the padding (0) is dropped, then re-applied
    return pad_left([np.asarray(h, dtype=np.int64) for h in histories], length)


def popularity_score_fn(counts: np.ndarray) -> ScoreFn:
    """Every user gets the training counts as scores: the floor any learned model must clear."""
    row = np.asarray(counts, dtype=np.float64).copy()
    row[0] = -np.inf

    def score(histories) -> np.ndarray:
        return np.broadcast_to(row, (len(histories), len(row))).copy()
    return score


def text_knn_score_fn(vectors: np.ndarray, recent: int = 5, decay: float = 1.0) -> ScoreFn:
    """Cosine similarity of every item's vector to the (weighted) mean of the last `recent` history items' vectors.

    `vectors` (N, d): row i-1 = item i; rows are L2-normalised here. The history item `a` steps before the most
    recent one weighs decay**a (1.0 = plain mean). An empty history scores every item 0.
    """
    if recent < 1:
        raise ConfigError("recent", recent, "must be at least 1")
    if not 0 < decay <= 1:
        raise ConfigError("decay", decay, "must be in (0, 1]")
    vectors = np.asarray(vectors, dtype=np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    table = np.vstack([np.zeros((1, unit.shape[1])), unit])  # row 0 = padding: a zero vector
    ages = decay ** np.arange(recent - 1, -1, -1, dtype=np.float64)  # the right-most column is the most recent

    def score(histories) -> np.ndarray:
        window = _as_padded(histories, recent)  # (B, recent)
        weights = ages * (window > 0)
        user = np.einsum("bt,btd->bd", weights, table[window])
        user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)  # the mean's direction only
        scores = user @ table.T
        scores[:, 0] = -np.inf
        return scores
    return score


def baseline_score_fn(kind: str, counts: np.ndarray, vectors: np.ndarray | None = None, recent: int = 5,
                      decay: float = 1.0) -> tuple[ScoreFn, int]:
    """(score function, history length it reads) for `kind` in KINDS."""
    if kind == "popularity":
        return popularity_score_fn(counts), 1
    if kind == "text-knn":
        if vectors is None:
            raise ConfigError("vectors", None, "text-knn needs --vectors (an `lsc4rec embed items` .npz file)")
        return text_knn_score_fn(vectors, recent, decay), recent
    raise ConfigError("kind", kind, f"must be one of {', '.join(KINDS)}")


def eval_main(args: argparse.Namespace) -> int:
    """`lsc4rec eval baseline`: a baseline's figures on protocol A or C, sliced cold/tail/warm."""
    if args.kind == "text-knn" and args.vectors is None:
        raise ConfigError("--vectors", None, "text-knn needs the item vectors file (`lsc4rec embed items`)")
    dataset = load_dataset(args.data)
    vectors = load_item_vectors(args.vectors, dataset) if args.kind == "text-knn" else None
    world = cold_world(dataset, args.protocol, args.cold_fraction, args.seed)
    score_fn, length = baseline_score_fn(args.kind, world.counts, vectors, args.recent, args.decay)
    ranks = rank_examples(score_fn, world.examples, length)
    figures = world.figures(ranks, args.per_example)
    settings = {"recent": args.recent, "decay": args.decay} if args.kind == "text-knn" else {}
    emit({"model": args.kind, "protocol": args.protocol, "description": PROTOCOLS[args.protocol],
          "seed": args.seed if args.protocol != "loo" else None, **settings, **figures}, args.json,
         f"Baseline {args.kind} (full ranking, seen items removed)")
    return 0
