"""Consistency between the LLM order and the SRM order of one candidate list (pure numpy functions).

Every function takes two orders of the same items, best first (`llm_order`, `srm_order`: 1-D
int arrays holding the same distinct ids), or, for the LSC4Rec score, the SRM's permutation of
the LLM list. Higher `lsc4rec_score` means MORE inconsistent (request a fresh list); the other
measures are agreements (1 = identical orders).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import InvalidArgumentError

#: Penalty constants of the reference rule S = D + (PENALTY_BASE + PENALTY_SLOPE * Z) ** 2.
PENALTY_BASE = 4.0
PENALTY_SLOPE = 0.3


def _check_same_items(llm_order: np.ndarray, srm_order: np.ndarray) -> None:
    if llm_order.shape != srm_order.shape or llm_order.ndim != 1:
        raise InvalidArgumentError("srm_order", srm_order.shape, f"must be 1-D like llm_order {llm_order.shape}")
    if len(np.unique(llm_order)) != llm_order.size:
        raise InvalidArgumentError("llm_order", llm_order.tolist(), "contains duplicates")
    if not np.array_equal(np.sort(llm_order), np.sort(srm_order)):
        raise InvalidArgumentError("srm_order", srm_order.tolist(), "must hold the same items as llm_order")


def positions(llm_order: Sequence[int], srm_order: Sequence[int]) -> np.ndarray:
    """(L,) int64: for each slot j of the LLM order, the 0-based position of that item in the SRM order."""
    llm = np.asarray(llm_order, dtype=np.int64)
    srm = np.asarray(srm_order, dtype=np.int64)
    _check_same_items(llm, srm)
    where = np.empty(llm.size, dtype=np.int64)
    # argsort of the LLM order tells each item's LLM slot; composing gives SRM position per LLM slot.
    llm_sort = np.argsort(llm, kind="stable")
    srm_sort = np.argsort(srm, kind="stable")
    where[llm_sort] = srm_sort
    return where


def footrule(llm_order: Sequence[int], srm_order: Sequence[int]) -> float:
    """D: mean absolute rank displacement (Spearman footrule / L) of the SRM order against the LLM order."""
    return _footrule(positions(llm_order, srm_order))


def lsc4rec_score(llm_order: Sequence[int], srm_order: Sequence[int], num_invalid: int = 0) -> float:
    """LSC4Rec's inconsistency S = D + (4 + 0.3 Z)^2, Z = invalid (padding / unusable) slots of the list.

    As in the reference rule the penalty term is always added, so Z = 0 contributes a constant 16
    (irrelevant for a threshold, which is calibrated on S itself); each invalid slot raises S.
    In this project Z counts slots of the original L-item list that can no longer be shown
    (consumed items, or a list shorter than requested), i.e. how stale the list has become.
    """
    return _lsc4rec(positions(llm_order, srm_order), num_invalid)


def kendall_tau(llm_order: Sequence[int], srm_order: Sequence[int]) -> float:
    """Kendall's tau-a between the two orders in [-1, 1] (1 = identical, -1 = reversed); 1 for L < 2."""
    return _kendall(positions(llm_order, srm_order))


def top_k_overlap(llm_order: Sequence[int], srm_order: Sequence[int], k: int) -> float:
    """|top-k(LLM) ∩ top-k(SRM)| / k' with k' = min(k, L); 1 for an empty list."""
    if k < 1:
        raise InvalidArgumentError("k", k, "must be >= 1")
    return _overlap(positions(llm_order, srm_order), k)


def rank_biased_overlap(llm_order: Sequence[int], srm_order: Sequence[int], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap (Webber et al. 2010, eq. 32) of two orders of the same items, in [0, 1].

    RBO_ext = (1 - p) / p * sum_{d=1..L} A_d p^d + A_L p^L, with A_d the top-d overlap fraction;
    identical orders give exactly 1.
    """
    if not 0.0 < p < 1.0:
        raise InvalidArgumentError("p", p, "must be in (0, 1)")
    return _rbo(positions(llm_order, srm_order), p)


# --- cores on `pos` (LLM slot j -> SRM position), shared by the checked API and the session's fast path ---
def _footrule(pos: np.ndarray) -> float:
    # sum_j |pos[j] - j| is the same for a permutation and its inverse (j = perm[i] <=> pos[j] = i)
    return float(np.abs(pos - np.arange(pos.size)).sum()) / pos.size if pos.size else 0.0


def _lsc4rec(pos: np.ndarray, num_invalid: int) -> float:
    if num_invalid < 0:
        raise InvalidArgumentError("num_invalid", num_invalid, "must be >= 0")
    return _footrule(pos) + (PENALTY_BASE + PENALTY_SLOPE * num_invalid) ** 2


def _kendall(pos: np.ndarray) -> float:
    n = pos.size
    if n < 2:
        return 1.0
    # pairs (i < j) of LLM slots: concordant when the SRM keeps them in the same order
    diff = np.sign(pos[None, :] - pos[:, None])  # (L, L), +1 where pos[j] > pos[i]
    return float(np.triu(diff, k=1).sum() / (n * (n - 1) / 2))


def _overlap(pos: np.ndarray, k: int) -> float:
    depth = min(k, pos.size)
    if depth == 0:
        return 1.0
    return int(np.count_nonzero(pos[:depth] < depth)) / depth


def _rbo(pos: np.ndarray, p: float) -> float:
    n = pos.size
    if n == 0:
        return 1.0
    # overlap at depth d = #items within the top d of both orders = #slots j < d with pos[j] < d
    deepest = np.maximum(np.arange(n), pos)  # depth (0-based) from which LLM slot j is shared
    shared = np.cumsum(np.bincount(deepest, minlength=n))  # (L,) overlap size at depth d = 1..L
    agreement = shared / np.arange(1, n + 1)
    weights = p ** np.arange(1, n + 1)
    return float((1 - p) / p * (agreement * weights).sum() + agreement[-1] * p ** n)


MEASURES = ("lsc4rec", "footrule", "kendall", "overlap", "rbo")
#: Measures that need the SRM's scores of the whole catalogue, not only of the cached list.
CATALOGUE_MEASURES = ("regret",)
ALL_MEASURES = MEASURES + CATALOGUE_MEASURES  # what a session (and a simulator preset) may ask for


def catalogue_regret(catalogue_logits: np.ndarray, pool: np.ndarray, excluded: np.ndarray, k: int = 10) -> float:
    """How much the cached list misses of what the SRM now believes the user wants, in [0, 1].

    `catalogue_logits` (V,) are the SRM's logits of every item id (index = id; id 0 is padding and
    ignored); `pool` the ids still showable from the cached list; `excluded` the ids never to be shown
    (consumed). With p = softmax of the logits over the showable catalogue, the regret is
    (mass of the k most probable catalogue items) - (mass of the k most probable pool items):
    0 when the list holds the SRM's whole top-k, near 1 when the SRM puts its belief outside the list.
    Unlike the order measures above it sees what a fresh list could bring, not only how the two
    models order the stale one.
    """
    logits = np.asarray(catalogue_logits, dtype=np.float64)
    if logits.ndim != 1 or logits.size < 2:
        raise InvalidArgumentError("catalogue_logits", logits.shape, "must be 1-D over item ids 0..V-1")
    if k < 1:
        raise InvalidArgumentError("k", k, "must be >= 1")
    pool = np.asarray(pool, dtype=np.int64)
    excluded = np.asarray(excluded, dtype=np.int64)
    for name, ids in (("pool", pool), ("excluded", excluded)):
        if ids.size and (ids.min() < 1 or ids.max() >= logits.size):
            raise InvalidArgumentError(name, ids.tolist(), f"ids must be in 1..{logits.size - 1}")
    showable = np.ones(logits.size, dtype=bool)
    showable[0] = False
    showable[excluded] = False
    if showable.any() and not np.isfinite(logits[showable]).all():
        raise InvalidArgumentError("catalogue_logits", "non-finite", "logits of showable items must be finite")
    return catalogue_regret_trusted(logits, pool, showable, k)


def catalogue_regret_trusted(catalogue_logits: np.ndarray, pool: np.ndarray, showable: np.ndarray, k: int) -> float:
    """`catalogue_regret` without the input checks, for callers that validated them (the session's
    per-event path): float64 logits finite where `showable` (bool (V,), False at 0 and at excluded ids)."""
    if not showable.any():
        return 0.0
    x = np.where(showable, catalogue_logits, -np.inf)
    p = np.exp(x - x.max())  # the max over the showable items: the others are -inf
    p /= p.sum()
    pool = pool[showable[pool]]
    top_catalogue = _top_sum(p, k)
    top_pool = _top_sum(p[pool], k) if pool.size else 0.0
    return float(max(top_catalogue - top_pool, 0.0))


def _top_sum(p: np.ndarray, k: int) -> float:
    """Sum of the k largest values, added smallest first (the same as np.sort(p)[-k:].sum())."""
    top = np.partition(p, p.size - k)[p.size - k:] if k < p.size else p
    return np.sort(top).sum()


def inconsistency(measure: str, llm_order: np.ndarray, srm_order: np.ndarray, num_invalid: int = 0,
                  k: int = 10, p: float = 0.9) -> float:
    """One number, higher = the two orders disagree more (agreements are turned into 1 - agreement)."""
    if k < 1 or not 0.0 < p < 1.0:
        raise InvalidArgumentError("k, p", (k, p), "need k >= 1 and 0 < p < 1")
    return _from_positions(measure, positions(llm_order, srm_order), num_invalid, k, p)


def inconsistency_of_permutation(measure: str, srm_permutation: np.ndarray, num_invalid: int = 0,
                                 k: int = 10, p: float = 0.9) -> float:
    """Fast path: `srm_permutation` lists LLM slots in the SRM's order (an argsort of the SRM scores)."""
    if measure in ("lsc4rec", "footrule"):  # the footrule needs no inversion (see _footrule)
        return _from_positions(measure, srm_permutation, num_invalid, k, p)
    pos = np.empty(srm_permutation.size, dtype=np.int64)
    pos[srm_permutation] = np.arange(srm_permutation.size)
    return _from_positions(measure, pos, num_invalid, k, p)


def _from_positions(measure: str, pos: np.ndarray, num_invalid: int, k: int, p: float) -> float:
    if measure == "lsc4rec":
        return _lsc4rec(pos, num_invalid)
    if measure == "footrule":
        return _footrule(pos)
    if measure == "kendall":
        return (1.0 - _kendall(pos)) / 2.0
    if measure == "overlap":
        return 1.0 - _overlap(pos, k)
    if measure == "rbo":
        return 1.0 - _rbo(pos, p)
    raise InvalidArgumentError("measure", measure, f"must be one of {', '.join(MEASURES)}")
