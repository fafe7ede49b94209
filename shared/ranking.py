"""Full-catalogue ranking of next-item examples by any score function (numpy only: models, baselines)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from shared.data.splits import Examples
from shared.metrics import ranks_from_scores
from shared.sequences import pad_left

ScoreFn = Callable[[np.ndarray], np.ndarray]  # (B, T) int64 histories -> (B, N + 1) float scores


def rank_examples(score_fn: ScoreFn, examples: Examples, max_len: int, remove_seen: bool = True,
                  batch_size: int = 256) -> np.ndarray:
    """0-based rank of each target among all items (ties count against it); -inf on seen items if asked.

    The model sees each history's last `max_len` items; "seen" means the user's whole history.
    """
    ranks = []
    for start in range(0, len(examples), batch_size):
        rows = range(start, min(start + batch_size, len(examples)))
        histories = [examples.histories[r] for r in rows]
        targets = examples.targets[start:start + len(histories)]
        scores = np.array(score_fn(pad_left(histories, max_len)), dtype=np.float64, copy=True)
        scores[:, 0] = -np.inf
        if remove_seen:
            for b, history in enumerate(histories):
                seen = np.asarray(history, dtype=np.int64)
                seen = seen[seen != targets[b]]  # the target itself is never taken away
                scores[b, seen] = -np.inf
        ranks.append(ranks_from_scores(scores, targets))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
