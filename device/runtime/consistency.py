"""Consistency between the LLM order and the SRM order of one candidate list (pure numpy functions).

Every function takes two orders of the same items, best first (`llm_order`, `srm_order`: 1-D
int arrays holding the same distinct ids), or, for the LSC4Rec score, the SRM's permutation of
the LLM list. Higher `lsc4rec_score` means MORE inconsistent (request a fresh list); the other
measures are agreements (1 = identical orders).

The request policies act on one number, higher = staler: `MEASURES` holds each measure by its one name
(lsc4rec, footrule, kendall, overlap, rbo, regret; CLI `--measure`, simulator `measure`). Adding a measure is one
`Measure(...)` in the table at the end of this module (or in a plugin, before the first lookup).
`Measure.of_list` / `Measure.of_catalogue` are what a DeviceSession scores after each event, and what the
simulator's calibration replay scores: one implementation for both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from shared.errors import InvalidArgumentError
from shared.registry import Registry

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


def srm_order(srm_logits: np.ndarray) -> np.ndarray:
    """(L,) int64 indices into the list by SRM logit, best first; ties keep the LLM order."""
    return (-np.asarray(srm_logits, dtype=np.float64)).argsort(kind="stable")



@dataclass(frozen=True)
class ListContext:
    """What a device holds after an event, for the measures that need no catalogue scan (`Measure.on_context`).

    `list_logits`: float64 SRM logits of the cached list's unconsumed items in the LLM's order (what `of_list` gets);
    `since`: the items consumed since the cached list arrived, oldest first (the last one is this event's);
    `since_slots`: for each of them its 0-based slot in the list the cloud sent, -1 when the list did not hold it;
    `list_size`: N, the length of the list the cloud sent; `held_logits`: float64 SRM logits of the unconsumed
    items of every list the device holds (the first list of the session and the cached one, ids the SRM knows),
    `held_in_list`: bool per held item, True where the cached list holds it (empty arrays when the measure does
    not ask for them: `Measure.needs_held`); `k`: the slate size; `since_srm_ranks`: for each item of `since`, its
    0-based rank in the SRM's order of the list's unconsumed items just before it was consumed (-1 when absent).
    """

    list_logits: np.ndarray
    since: np.ndarray
    since_slots: np.ndarray
    list_size: int
    k: int
    held_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    held_in_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    since_srm_ranks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # [log Z, log T] from the user encoder's partition head (log-sum-exp of the SRM logits over the showable catalogue,
    # and over its top K), for `Measure.needs_partition`; None when the model has no head
    log_partition: np.ndarray | None = None


#: Decay per event of the miss signals: a miss j events ago weighs MISS_DECAY ** j.
MISS_DECAY = 0.5


def decayed_misses(since_slots: np.ndarray, decay: float = MISS_DECAY) -> float:
    """sum_j decay^age_j over the items consumed since the list arrived that the list did not hold (slot -1);
    the newest item has age 0. 0 when every consumed item was in the list."""
    slots = np.asarray(since_slots, dtype=np.int64)
    return _decayed_sum(slots < 0, decay)


def decayed_miss_depth(since_slots: np.ndarray, list_size: int, decay: float = MISS_DECAY) -> float:
    """Like `decayed_misses`, each consumed item weighted by how deep the LLM had put it: slot / N, 1 when the list
    did not hold it (a hit in the LLM's first slot counts 0)."""
    slots = np.asarray(since_slots, dtype=np.int64)
    return _decayed_sum(np.where(slots < 0, 1.0, slots / max(int(list_size), 1)), decay)


def _decayed_sum(weights: np.ndarray, decay: float) -> float:
    """sum_j weights[j] x decay^age_j, the last entry (the newest event) of age 0; 0 for none."""
    if weights.size == 0:
        return 0.0
    return float((weights * decay ** np.arange(weights.size - 1, -1, -1)).sum())


#: Weight of `list_belief` in "miss-belief" (0.3 x the ratio of the two scores' spreads on the validation world's
#: calibration replay: 0.555 for miss-depth, 1.28 for list-belief).
BELIEF_WEIGHT = 0.13


def miss_belief(since_slots: np.ndarray, list_size: int, list_logits: np.ndarray,
                weight: float = BELIEF_WEIGHT) -> float:
    """`decayed_miss_depth` (what the user did since the list arrived) + weight x `list_belief` (what the SRM now
    thinks of what is left of it)."""
    return decayed_miss_depth(since_slots, list_size) + weight * list_belief(list_logits)


def held_regret(held_logits: np.ndarray, held_in_list: np.ndarray, k: int) -> float:
    """`catalogue_regret` with the held pool (every unconsumed item of the lists the device holds) in place of the
    catalogue: softmax over the held pool, top-k mass of the pool minus top-k mass of the cached list's items."""
    x = np.asarray(held_logits, dtype=np.float64)
    if x.size == 0:
        return 0.0
    p = np.exp(x - x.max())
    p /= p.sum()
    inside = p[np.asarray(held_in_list, dtype=bool)]
    return float(max(_top_sum(p, min(k, p.size)) - (_top_sum(inside, min(k, inside.size)) if inside.size else 0.0),
                     0.0))


def held_mass_gap(held_logits: np.ndarray, held_in_list: np.ndarray) -> float:
    """1 - the SRM's softmax mass of the held pool that the cached list's unconsumed items carry, in [0, 1]."""
    x = np.asarray(held_logits, dtype=np.float64)
    if x.size == 0:
        return 0.0
    p = np.exp(x - x.max())
    return float(1.0 - p[np.asarray(held_in_list, dtype=bool)].sum() / p.sum())


def estimated_regret(list_logits: np.ndarray, log_partition: np.ndarray | None, k: int) -> float:
    """`catalogue_regret` with the catalogue's softmax normaliser log Z and its top-K log-mass log T predicted from
    the user vector (device.training.partition_head): exp(log T - log Z) - the top-K mass of the list's unconsumed
    items, clipped to [0, 1]. NaN without a prediction (policies then do not request on it)."""
    if log_partition is None:
        return math.nan
    x = np.asarray(list_logits, dtype=np.float64)
    log_z, log_top = float(log_partition[0]), float(log_partition[1])
    inside = 0.0
    if x.size:
        top = np.partition(x, x.size - k)[x.size - k:] if k < x.size else x
        inside = float(np.exp(top - log_z).sum())
    return float(min(max(math.exp(min(log_top - log_z, 0.0)) - inside, 0.0), 1.0))


def list_belief(list_logits: np.ndarray) -> float:
    """-logsumexp of the SRM logits of the cached list's unconsumed items: high when the SRM believes in none of
    them (an absolute level, unlike the order measures; no catalogue needed)."""
    x = np.asarray(list_logits, dtype=np.float64)
    if x.size == 0:
        return math.inf
    m = x.max()
    return float(-(m + np.log(np.exp(x - m).sum())))


@dataclass(frozen=True)
class Measure:
    """One inconsistency measure: a number after each event, higher = the cached list looks staler.

    An order measure (`on_positions`) compares the SRM's order of the list's unconsumed items with the LLM's;
    a catalogue measure (`on_catalogue`) compares what the SRM believes over the whole catalogue with what the
    list can still show (the session then scores every item on each event).
    """

    name: str
    text: str  # what it measures, in a sentence fragment (the simulator's report quotes it)
    # (pos, num_invalid, k, p) -> score, with pos[j] the SRM position of LLM slot j
    on_positions: Callable[[np.ndarray, int, int, float], float] | None = None
    symmetric: bool = False  # the same on a permutation and on its inverse: the fast path skips the inversion
    # (float64 logits of every id with id 0 ignored, showable ids of the list, bool showable mask, k) -> score
    on_catalogue: Callable[[np.ndarray, np.ndarray, np.ndarray, int], float] | None = None
    # (ListContext) -> score: a measure on what the device holds, no catalogue scan (see ListContext)
    on_context: Callable[[ListContext], float] | None = None
    needs_held: bool = False  # on_context reads held_logits / held_in_list (the SRM scores the held pool)
    needs_partition: bool = False  # on_context reads log_partition (a user encoder with a partition head)

    @property
    def needs_catalogue(self) -> bool:
        return self.on_catalogue is not None

    @property
    def needs_context(self) -> bool:
        return self.on_context is not None

    def of_permutation(self, srm_permutation: np.ndarray, num_invalid: int = 0, k: int = 10,
                       p: float = 0.9) -> float:
        """`srm_permutation` lists LLM slots in the SRM's order (an argsort of the SRM scores)."""
        if self.on_positions is None:
            raise InvalidArgumentError("measure", self.name, "scores the catalogue, not the order of a list")
        if self.symmetric:
            return self.on_positions(srm_permutation, num_invalid, k, p)
        pos = np.empty(srm_permutation.size, dtype=np.int64)
        pos[srm_permutation] = np.arange(srm_permutation.size)
        return self.on_positions(pos, num_invalid, k, p)

    def of_list(self, srm_logits: np.ndarray, num_invalid: int, k: int, p: float = 0.9) -> float:
        """An order measure after an event: `srm_logits` (float64) of the cached list's unconsumed items, in the
        LLM's order; `num_invalid` slots of the N the cloud sent can no longer be shown."""
        return self.of_permutation(srm_order(srm_logits), num_invalid, k, p)

    def of_context(self, context: ListContext) -> float:
        """A context measure after an event (see ListContext)."""
        if self.on_context is None:
            raise InvalidArgumentError("measure", self.name, "does not score a ListContext")
        return self.on_context(context)

    def of_catalogue(self, catalogue_logits: np.ndarray, pool: np.ndarray, showable: np.ndarray, k: int) -> float:
        """A catalogue measure after an event: float64 `catalogue_logits` (V,) indexed by id (finite where
        `showable`), the ids of the list's unconsumed items, and which ids may be shown (False at 0 and at
        consumed ids); inputs trusted (see catalogue_regret for the checked form)."""
        if self.on_catalogue is None:
            raise InvalidArgumentError("measure", self.name, "scores the order of a list, not the catalogue")
        return self.on_catalogue(catalogue_logits, pool, showable, k)


MEASURES: Registry[Measure] = Registry("measure")


def inconsistency(measure: str, llm_order: np.ndarray, srm_order: np.ndarray, num_invalid: int = 0,
                  k: int = 10, p: float = 0.9) -> float:
    """One number, higher = the two orders disagree more (agreements are turned into 1 - agreement)."""
    if k < 1 or not 0.0 < p < 1.0:
        raise InvalidArgumentError("k, p", (k, p), "need k >= 1 and 0 < p < 1")
    entry = MEASURES.get(measure, field="measure")
    if entry.on_positions is None:
        raise InvalidArgumentError("measure", measure, "scores the catalogue, not the order of a list")
    return entry.on_positions(positions(llm_order, srm_order), num_invalid, k, p)


for _measure in (
        Measure("lsc4rec", "the reference's footrule inconsistency D + (4 + 0.3 Z)^2 of the SRM order against the "
                           "LLM order", lambda pos, invalid, k, p: _lsc4rec(pos, invalid), symmetric=True),
        Measure("footrule", "the footrule D of the SRM order against the LLM order",
                lambda pos, invalid, k, p: _footrule(pos), symmetric=True),
        Measure("kendall", "(1 - Kendall tau) / 2", lambda pos, invalid, k, p: (1.0 - _kendall(pos)) / 2.0),
        Measure("overlap", "1 - top-K overlap of the SRM and LLM orders",
                lambda pos, invalid, k, p: 1.0 - _overlap(pos, k)),
        Measure("rbo", "1 - rank-biased overlap (p = 0.9)", lambda pos, invalid, k, p: 1.0 - _rbo(pos, p)),
        Measure("regret", "the catalogue regret: the SRM's softmax mass of its top-K items over the whole unconsumed "
                          "catalogue minus that of its top-K among the cached list's unconsumed items",
                on_catalogue=catalogue_regret_trusted),
        # no catalogue scan: what the device holds (its history since the list, the lists, the SRM on them)
        Measure("miss", "the decayed count (x0.5 per event) of consumed items the cached list did not hold",
                on_context=lambda c: decayed_misses(c.since_slots)),
        Measure("miss-depth", "the decayed (x0.5 per event) LLM depth of the consumed items in the cached list "
                              "(slot / N, 1 when absent)",
                on_context=lambda c: decayed_miss_depth(c.since_slots, c.list_size)),
        Measure("srm-miss-depth", "the decayed (x0.5 per event) SRM rank of the consumed items in the cached list "
                                  "just before they were consumed (rank / N, 1 when absent)",
                on_context=lambda c: decayed_miss_depth(c.since_srm_ranks, c.list_size)),
        Measure("list-belief", "-logsumexp of the SRM logits of the cached list's unconsumed items",
                on_context=lambda c: list_belief(c.list_logits)),
        Measure("miss-belief", "miss-depth + 0.13 x list-belief: the LLM depth of the recently consumed items in the "
                               "cached list plus how little the SRM believes in its unconsumed items",
                on_context=lambda c: miss_belief(c.since_slots, c.list_size, c.list_logits)),
        Measure("held-regret", "the regret of the cached list over the held pool (unconsumed items of the first "
                               "and the cached list) instead of the catalogue",
                on_context=lambda c: held_regret(c.held_logits, c.held_in_list, c.k), needs_held=True),
        Measure("held-mass", "1 - the SRM's softmax mass of the held pool on the cached list's unconsumed items",
                on_context=lambda c: held_mass_gap(c.held_logits, c.held_in_list), needs_held=True),
        Measure("est-regret", "the catalogue regret with the catalogue's softmax normaliser and top-K mass predicted "
                              "from the user vector (the user encoder's partition head): no catalogue scan",
                on_context=lambda c: estimated_regret(c.list_logits, c.log_partition, c.k), needs_partition=True)):
    MEASURES.register(_measure.name, _measure)
del _measure
