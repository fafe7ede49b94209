"""Score fusion of the cloud LLM's list order and the device SRM's probabilities (LSC4Rec collaborative inference).

Inputs for one candidate list of L items, in the LLM's order (slot j = 0 is the LLM's best):
`llm_scores` (L,) the generator's scores (higher is better; only their softmax uses the values),
`srm_logits` (L,) the SRM's logits on the real-time history, p_j = sigmoid(logit).

Rules (FusionConfig.rule):
- "reference": s_j = -(j+1)/L + (p_j - 0.5)  (the rule of the paper's tables)
- "linear":    s_j = alpha * llm_norm_j + (1 - alpha) * srm_norm_j
               llm_norm: "rank" -(j+1)/L, "softmax" softmax(llm_scores), or "logprob" the scores themselves
                         (the LLM generator's are sequence log-probabilities);
               srm_norm: "prob" p_j - 0.5, "rank" -(rank of p_j + 1)/L, or "logit" the logits themselves.
               "logprob" + "logit" is a weighted product of experts: within one list, a full-softmax SRM's
               logits are its log-probabilities up to a constant, so s_j ranks as
               alpha log P_llm(j) + (1 - alpha) log P_srm(j | list).
- "llm":       the LLM order (alpha = 1), "srm": the SRM order (alpha = 0).
"reference" equals "linear" with alpha = 0.5, llm_norm = "rank", srm_norm = "prob" up to a factor 2.
`positions` lets a shrunken list (consumed items removed) keep the slots j and the length L of the
list the cloud sent.

The norms are registries (`LLM_NORMS`, `SRM_NORMS`) holding each norm by its one name, which the device CLI
(`--llm-norm`, `--srm-norm`), simulator presets (`llm_norm`, `srm_norm`) and the report all use; adding a norm is
one `Norm(...)` in the tables at the end of this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from shared.config import check
from shared.errors import InvalidArgumentError
from shared.registry import Registry


@dataclass(frozen=True)
class Norm:
    """How one side's scores enter the linear rule."""

    name: str
    text: str  # what the term is (the simulator's report quotes it)
    # LLM side: (llm_scores, positions, length) -> (L,) float64; SRM side: (srm_logits) -> a NEW (L,) float64 array
    # (the caller scales it in place)
    term: Callable[..., np.ndarray]


LLM_NORMS: Registry[Norm] = Registry("llm_norm")
SRM_NORMS: Registry[Norm] = Registry("srm_norm")
RULES = ("reference", "linear", "llm", "srm")


@dataclass(frozen=True)
class FusionConfig:
    """How the final order is made from the LLM order and the SRM probabilities."""

    rule: Literal["reference", "linear", "llm", "srm"] = "reference"
    alpha: float = 0.5  # weight of the LLM term in "linear"
    llm_norm: str = "rank"  # a name of LLM_NORMS
    srm_norm: str = "prob"  # a name of SRM_NORMS

    def __post_init__(self):
        check(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "must be in [0, 1]")
        check(self.rule in RULES, "rule", self.rule, f"must be one of {', '.join(RULES)}")
        check(self.llm_norm in LLM_NORMS, "llm_norm", self.llm_norm,
              f"unknown LLM norm (known: {', '.join(LLM_NORMS.names())})")
        check(self.srm_norm in SRM_NORMS, "srm_norm", self.srm_norm,
              f"unknown SRM norm (known: {', '.join(SRM_NORMS.names())})")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64: 0.5 * (1 + tanh(0.5 x)), the last two steps in place."""
    out = np.tanh(0.5 * np.asarray(logits, dtype=np.float64))
    out += 1.0
    out *= 0.5
    return out


def rank_norm(num: int, positions: np.ndarray | None = None, length: int | None = None) -> np.ndarray:
    """-(j+1)/L for slots j (default 0..num-1, L = num)."""
    slots = np.arange(num, dtype=np.float64) if positions is None else np.asarray(positions, dtype=np.float64)
    return -(slots + 1.0) / float(length or num)


def softmax(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def _srm_rank_norm(probs: np.ndarray) -> np.ndarray:
    order = np.argsort(-probs, kind="stable")
    ranks = np.empty(probs.size, dtype=np.float64)
    ranks[order] = np.arange(probs.size)
    return -(ranks + 1.0) / probs.size


def fuse(config: FusionConfig, llm_scores: np.ndarray, srm_logits: np.ndarray,
         positions: np.ndarray | None = None, length: int | None = None) -> np.ndarray:
    """(L,) float64 fused scores, higher is better, for a list in the LLM's order."""
    llm_scores = np.asarray(llm_scores, dtype=np.float64)
    srm_logits = np.asarray(srm_logits, dtype=np.float64)
    if llm_scores.shape != srm_logits.shape or llm_scores.ndim != 1:
        raise InvalidArgumentError("srm_logits", srm_logits.shape, f"must be 1-D like llm_scores {llm_scores.shape}")
    if not (np.isfinite(llm_scores).all() and np.isfinite(srm_logits).all()):
        raise InvalidArgumentError("scores", "non-finite", "fusion inputs must be finite")
    return ListFusion(config, llm_scores, positions, length).fuse(srm_logits)


class ListFusion:
    """The fusion of one candidate list, split in two: the LLM term depends only on the list, so it is
    computed once here; `fuse(srm_logits)` adds the SRM term of each event (the session's per-event path).
    Inputs are trusted (validated by the caller); results equal `fuse` bit for bit."""

    def __init__(self, config: FusionConfig, llm_scores: np.ndarray, positions: np.ndarray | None = None,
                 length: int | None = None):
        self.config = config
        linear = config.rule == "linear"
        # "reference" is the linear rule's rank + prob terms, unweighted; "llm" is the rank term alone
        llm_term = LLM_NORMS.get(config.llm_norm if linear else "rank").term(llm_scores, positions, length)
        self._llm_term = config.alpha * llm_term if linear else llm_term  # "linear": already weighted by alpha
        self._srm_norm = SRM_NORMS.get(config.srm_norm if linear else "prob")

    def fuse(self, srm_logits: np.ndarray) -> np.ndarray:
        """(L,) float64 fused scores, higher is better, for the list's SRM logits (a new array)."""
        config = self.config
        if config.rule == "llm":
            return self._llm_term.copy()
        if config.rule == "srm":
            return sigmoid(srm_logits)
        srm_term = self._srm_norm.term(srm_logits)
        if config.rule == "linear":
            srm_term *= 1.0 - config.alpha
        srm_term += self._llm_term
        return srm_term


def fused_order(config: FusionConfig, llm_scores: np.ndarray, srm_logits: np.ndarray,
                positions: np.ndarray | None = None, length: int | None = None) -> np.ndarray:
    """(L,) int64 indices into the list, best first; ties keep the LLM order (stable sort)."""
    return np.argsort(-fuse(config, llm_scores, srm_logits, positions, length), kind="stable")


def untrained_mask(untrained, num_items: int) -> np.ndarray | None:
    """(num_items + 1,) bool, True at the ids of `untrained` (None when there are none): one lookup per event."""
    if not len(untrained):
        return None
    mask = np.zeros(num_items + 1, dtype=bool)
    mask[np.asarray(untrained, dtype=np.int64)] = True
    return mask


def untrained_in(items: np.ndarray, mask: np.ndarray | None, num_items: int | None = None) -> np.ndarray | None:
    """(L,) bool: the items the SRM was never trained on, i.e. marked in `mask` (untrained_mask()) or, with
    `num_items`, beyond its catalogue (items added to the cloud's catalogue after the SRM was made: it has no
    embedding for them at all). None when there are none to mark."""
    items = np.asarray(items, dtype=np.int64)
    beyond = items > num_items if num_items is not None else None
    if mask is None:
        return beyond if beyond is not None and beyond.any() else None
    unknown = np.ones(items.size, dtype=bool)  # ids past the mask are beyond the catalogue
    inside = items < mask.size
    unknown[inside] = mask[items[inside]]
    return unknown


def neutral_untrained(items: np.ndarray, srm_logits: np.ndarray, mask: np.ndarray | None,
                      num_items: int | None = None) -> np.ndarray:
    """The SRM's logits, those of the items it was never trained on (`mask`, untrained_mask(), and with `num_items`
    the ids beyond its catalogue, whose logits are placeholders) replaced by the mean of the list's others.

    The model's score of such an item (a new item, say) only says "never seen", which would bury it; a neutral
    score lets the cloud's score place it. A list of untrained items only is returned as it is.
    """
    unknown = untrained_in(items, mask, num_items)
    if unknown is None or not unknown.any() or unknown.all():
        return srm_logits
    return np.where(unknown, srm_logits[~unknown].mean(), srm_logits)


def _centred_prob(srm_logits: np.ndarray) -> np.ndarray:
    probs = sigmoid(srm_logits)
    probs -= 0.5
    return probs


for _norm in (Norm("rank", "LLM rank (-(j+1)/N)", lambda scores, positions, length: rank_norm(
                  scores.size, positions, length)),
              Norm("softmax", "LLM softmax of its scores", lambda scores, positions, length: softmax(scores)),
              Norm("logprob", "LLM log-probability (the generator's score)",
                   lambda scores, positions, length: np.asarray(scores, dtype=np.float64))):
    LLM_NORMS.register(_norm.name, _norm)
for _norm in (Norm("prob", "(SRM sigmoid - 0.5)", _centred_prob),
              Norm("rank", "SRM rank (-(rank among the unconsumed candidates + 1) / their number)",
                   lambda logits: _srm_rank_norm(sigmoid(logits))),
              Norm("logit", "SRM logit", lambda logits: np.array(logits, dtype=np.float64))):  # a copy
    SRM_NORMS.register(_norm.name, _norm)
del _norm
