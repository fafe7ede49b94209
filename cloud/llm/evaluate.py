"""Quality of an LLMGenerator: the ranked beam output scored against next-item targets (protocol A)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.data.dataset import Dataset
from shared.data.splits import Examples, loo_split
from shared.metrics import summarize, target_ranks

EVAL_KS = (5, 10, 20, 50)


def list_length(num_items: int, histories: Sequence[Sequence[int]], n: int, keep_seen: bool) -> int:
    """The candidate list length: n, shortened where a history leaves fewer unseen items (tiny catalogues)."""
    if keep_seen or not histories:
        return min(n, num_items)
    return max(1, min(n, num_items - max(len(set(map(int, h))) for h in histories)))


def ranks_for(generator, examples: Examples, n: int = 50, keep_seen: bool = False) -> np.ndarray:
    """0-based rank of each target in the generator's n-item list (-1 = not in it).

    keep_seen=False is protocol A (seen items are never recommended); True is RecBole's rule.
    """
    histories = [np.asarray(h, dtype=np.int64) for h in examples.histories]
    n = list_length(generator.num_items, histories, n, keep_seen)
    blocked = [set() if keep_seen else set(map(int, h)) for h in histories]
    items, _ = generator.rank(histories, n, blocked)
    return target_ranks(items, examples.targets)


def evaluate_examples(generator, examples: Examples, n: int = 50, ks=EVAL_KS, keep_seen: bool = False) -> dict:
    """summarize() figures for one set of examples."""
    return summarize(ranks_for(generator, examples, n, keep_seen), ks)


def evaluate_loo(generator, dataset: Dataset, n: int = 50, keep_seen: bool = False) -> dict:
    """Protocol A test figures: HR/NDCG/MRR/recall @ 5, 10, 20, 50 over every evaluable user."""
    split = loo_split(dataset)
    figures = evaluate_examples(generator, split.test, n, EVAL_KS, keep_seen)
    figures.update({"protocol": "A (leave-one-out, full ranking = ranked beam output)" if not keep_seen
                    else "A, seen items kept (RecBole rule)", "users": int(len(split.test)), "n": n})
    return figures
