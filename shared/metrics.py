"""Ranking metrics (HR, NDCG, MRR, recall @K, coverage), vectorised over a batch of users.

Every metric starts from the 0-based rank of the single target in a ranked list (-1 = absent).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = (5, 10, 20, 50)


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its row of `ranked` (B, L); -1 where it is absent."""
    ranked = np.atleast_2d(np.asarray(ranked))
    targets = np.asarray(targets).reshape(-1, 1)
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"{ranked.shape[0]} ranked lists for {targets.shape[0]} targets")
    hit = ranked == targets
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1), -1)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target column in `scores` (B, N), counting ties against the target.

    rank = number of other items scoring >= the target, so a constant scorer gets no credit.
    Items to exclude should carry -inf before the call.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    targets = np.asarray(targets, dtype=np.int64)
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(axis=1) - 1


def hit_rate(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-example NDCG@K with one relevant item: 1 / log2(rank + 2) inside the top K, else 0."""
    ranks = np.asarray(ranks)
    inside = (ranks >= 0) & (ranks < k)
    gains = np.zeros(ranks.shape, dtype=np.float64)
    gains[inside] = 1.0 / np.log2(ranks[inside] + 2.0)
    return gains


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@K (see ndcg_gains); 0 for no examples."""
    return float(ndcg_gains(ranks, k).mean()) if np.asarray(ranks).size else 0.0


def mrr(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks)
    if not ranks.size:
        return 0.0
    inside = (ranks >= 0) & (ranks < k)
    values = np.zeros(ranks.shape, dtype=np.float64)
    values[inside] = 1.0 / (ranks[inside] + 1.0)
    return float(values.mean())


def recall(ranks: np.ndarray, k: int) -> float:
    """Recall@K with one relevant item per user equals HR@K; kept as its own name for reports."""
    return hit_rate(ranks, k)


def coverage(ranked_lists: Iterable[Sequence[int]], num_items: int, k: int | None = None) -> float:
    """Share of the catalogue (1..num_items) that appears in at least one list's top K."""
    seen: set[int] = set()
    for row in ranked_lists:
        seen.update(int(i) for i in list(row)[:k] if 0 < int(i) <= num_items)
    return len(seen) / num_items if num_items else 0.0


def summarize(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """The report's standard keys: hr@K, ndcg@K, mrr@K, recall@K for each K."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
        out[f"mrr@{k}"] = mrr(ranks, k)
        out[f"recall@{k}"] = recall(ranks, k)
    return out
