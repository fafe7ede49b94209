"""Figures of a run from its per-step rows, and the no-cloud baseline (SRM over the full catalogue)."""
from __future__ import annotations

import numpy as np

from shared.metrics import hit_rate, mrr, ndcg, ndcg_gains
from shared.sequences import pad_left


def summarize(rows: dict[str, np.ndarray], k: int) -> dict:
    """HR/NDCG/MRR on the slates shown before each event, request rate, staleness, bytes, latency."""
    ranks = np.asarray(rows["rank"], dtype=np.int64)
    steps = len(ranks)
    requested = np.asarray(rows["requested"], dtype=bool)
    delivered = np.asarray(rows["delivered"], dtype=bool)
    latency = np.asarray(rows["latency_ms"], dtype=np.float64)[requested & delivered]
    out = {}
    # The slate holds K items, so @10 with K < 10 equals @K; @5, @10 and @K are always reported.
    for cut in sorted({5, 10, k}):
        out.update({f"hr@{cut}": hit_rate(ranks, cut), f"ndcg@{cut}": ndcg(ranks, cut), f"mrr@{cut}": mrr(ranks, cut)})
    out.update({
        "steps": steps,
        "users": int(len(np.unique(rows["user"]))) if steps else 0,
        "requests": int(requested.sum()),
        "request_rate": float(requested.mean()) if steps else 0.0,
        "failed_requests": int((requested & ~delivered).sum()),
        "stale_slates": int(np.asarray(rows["stale"], dtype=bool).sum()),
        "bytes_up_per_event": float(np.sum(rows["bytes_up"]) / steps) if steps else 0.0,
        "bytes_down_per_event": float(np.sum(rows["bytes_down"]) / steps) if steps else 0.0,
        "latency_p50_ms": float(np.percentile(latency, 50)) if latency.size else None,
        "latency_p99_ms": float(np.percentile(latency, 99)) if latency.size else None,
        PER_USER: per_user_ndcg(rows["user"], ranks),
    })
    return out


POPULARITY = "by_popularity"  # NDCG@10 / HR@10 / events per bucket of the target's training interactions
# (low, high, label): buckets of the stream target's interactions in the device's training data (protocol B's past)
POPULARITY_BUCKETS = ((0, 0, "0 (no interaction)"), (1, 10, "1-10 (tail)"), (11, 50, "11-50"), (51, 200, "51-200"),
                      (201, None, ">200"))


NEW_ITEMS = "new items (protocol C)"


def by_popularity(targets: np.ndarray, ranks: np.ndarray, counts: np.ndarray, k: int = 10,
                  new_items: np.ndarray | None = None) -> dict[str, dict]:
    """Per popularity bucket of the target (training interactions, `counts` indexed by item id): NDCG@k, HR@k, events.

    With `new_items` (protocol C's cold draw), their events form a bucket of their own, ahead of the others.
    """
    targets = np.asarray(targets, dtype=np.int64)
    seen = np.asarray(counts)[targets]
    ranks = np.asarray(ranks, dtype=np.int64)
    has_new = new_items is not None and len(new_items) > 0
    new = np.isin(targets, new_items) if has_new else np.zeros(len(targets), dtype=bool)
    buckets = [(new, NEW_ITEMS)] if has_new else []
    for low, high, label in POPULARITY_BUCKETS:
        buckets.append((~new & (seen >= low) & ((seen <= high) if high is not None else True), label))
    return {label: {f"ndcg@{k}": ndcg(ranks[keep], k), f"hr@{k}": hit_rate(ranks[keep], k), "events": int(keep.sum())}
            for keep, label in buckets}


PER_USER = "per_user_ndcg@10"  # each user's mean NDCG@10 over their steps, users in ascending id order


def per_user_ndcg(users: np.ndarray, ranks: np.ndarray, k: int = 10) -> list[float]:
    """Each user's mean NDCG@k over their steps, users in ascending id order (for paired comparisons)."""
    if not len(ranks):
        return []
    _, index = np.unique(np.asarray(users), return_inverse=True)
    sums = np.bincount(index, weights=ndcg_gains(ranks, k))
    return np.round(sums / np.bincount(index), 6).tolist()


def paired_difference(a, b, resamples: int = 2000, seed: int = 0) -> dict | None:
    """Mean of a - b over users and its 95% bootstrap interval (users resampled, seeded); None when the
    per-user lists differ in length. Two runs of one grid replay the same users and events, so pairing
    them removes the spread between users that a comparison of two means would carry."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or a.shape != b.shape:
        return None
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, (resamples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "ci95": [float(low), float(high)]}


def device_only_ranks(streams, reranker, length: int, num_items: int, k: int, batch: int = 128) -> np.ndarray:
    """(U, S) 0-based rank of each stream item when the SRM ranks the whole catalogue minus the history.

    The device knows the whole past and every revealed stream item (no cloud involved); -1 beyond K.
    """
    users, steps = streams.items.shape
    ranks = np.full((users, steps), -1, dtype=np.int64)
    catalogue = np.arange(1, num_items + 1, dtype=np.int64)
    for start in range(0, users, batch):
        idx = range(start, min(start + batch, users))
        for t in range(steps):
            hists = [np.concatenate([streams.past[u], streams.items[u, :t]]) for u in idx]
            scores = np.asarray(reranker.score(pad_left(hists, length),
                                               np.broadcast_to(catalogue, (len(hists), num_items)).copy()),
                                dtype=np.float64)
            for row, (u, hist) in enumerate(zip(idx, hists)):
                s = scores[row]
                s[hist - 1] = -np.inf  # consumed items are never recommended again
                target = streams.items[u, t]
                order = np.argsort(-s, kind="stable")[:k] + 1
                hit = np.flatnonzero(order == target)
                ranks[u, t] = int(hit[0]) if len(hit) else -1
    return ranks
