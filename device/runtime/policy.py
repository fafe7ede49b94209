"""Request policies: when a device asks the cloud for a fresh candidate list, each decision with its reason.

A policy maps a `PolicyState` (what the session knows after an event) to a `Decision`. Every policy
first applies the two forced rules: request when there are no candidates, or when fewer than K
unconsumed candidates remain. Then:
- never / always / every n events / random at rate r: pure functions of the state (random draws a
  uniform number from a hash of (seed, user, event index), so replays are deterministic);
- threshold: request when the inconsistency score >= a fixed threshold;
- budget: request when the score is in the top `rate` fraction of the score distribution. The
  distribution comes from a calibration replay (`calibration_scores`) and/or is learnt online from
  the scores it sees (a window); with `adapt` a feedback term steers the realised rate (forced
  requests included) back to the target. Share ONE BudgetPolicy across the sessions of a fleet (as
  the simulator does): per user there are too few events to calibrate on.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import numpy as np

from shared.config import check
from shared.errors import InvalidArgumentError


@dataclass(frozen=True)
class PolicyState:
    """The session's state after an event, as seen by the policy."""

    user_id: str
    event_index: int  # events seen in this session, counting the current one (1-based)
    events_since_request: int  # events since the last successful candidate list
    score: float  # inconsistency of the LLM and SRM orders (higher = staler); nan when unknown
    remaining: int  # unconsumed candidates in the cached list
    slate_size: int  # K


@dataclass(frozen=True)
class Decision:
    """Whether to request a fresh list, and why (for logs, reports and the CLI)."""

    request: bool
    reason: str
    score: float = math.nan
    threshold: float | None = None


class Policy(Protocol):
    name: str

    def decide(self, state: PolicyState) -> Decision: ...


def uniform(seed: int, user_id: str, event_index: int) -> float:
    """A deterministic uniform number in [0, 1) from (seed, user, event)."""
    digest = hashlib.blake2b(f"{seed}|{user_id}|{event_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def forced(state: PolicyState) -> Decision | None:
    """The rules every policy obeys: no list, or fewer than K unconsumed candidates."""
    if state.remaining == 0:
        return Decision(True, "no candidates cached", state.score)
    if state.remaining < state.slate_size:
        return Decision(True, f"only {state.remaining} unconsumed candidates < K={state.slate_size}", state.score)
    return None


class _Base:
    name = "base"

    def decide(self, state: PolicyState) -> Decision:
        return forced(state) or self._decide(state)

    def _decide(self, state: PolicyState) -> Decision:
        raise NotImplementedError


class Never(_Base):
    name = "never"

    def _decide(self, state):
        return Decision(False, "policy never", state.score)


class Always(_Base):
    name = "always"

    def _decide(self, state):
        return Decision(True, "policy always", state.score)


class EveryN(_Base):
    name = "every"

    def __init__(self, n: int):
        check(n >= 1, "policy.n", n, "must be >= 1")
        self.n = n

    def _decide(self, state):
        due = state.events_since_request >= self.n
        return Decision(due, f"{state.events_since_request} events since the last list, every {self.n}", state.score)


class RandomRate(_Base):
    name = "random"

    def __init__(self, rate: float, seed: int = 0):
        check(0.0 <= rate <= 1.0, "policy.rate", rate, "must be in [0, 1]")
        self.rate, self.seed = rate, seed

    def _decide(self, state):
        u = uniform(self.seed, state.user_id, state.event_index)
        return Decision(u < self.rate, f"random draw {u:.3f} {'<' if u < self.rate else '>='} rate {self.rate:g}",
                        state.score)


class Threshold(_Base):
    name = "threshold"

    def __init__(self, threshold: float):
        check(math.isfinite(threshold), "policy.threshold", threshold, "must be finite")
        self.threshold = threshold

    def _decide(self, state):
        if math.isnan(state.score):
            return Decision(False, "no consistency score", state.score, self.threshold)
        hit = state.score >= self.threshold
        return Decision(hit, f"consistency {state.score:.3f} {'>=' if hit else '<'} threshold {self.threshold:.3f}",
                        state.score, self.threshold)


_RECUT_EVERY = 8  # decisions between two recomputations of the budget threshold
_MIN_SCORES = 20  # below this many scores the budget policy draws at random at its target rate


class Budget(_Base):
    """Consistency under a request budget: the top `rate` fraction of scores ask for a fresh list."""

    name = "budget"

    def __init__(self, rate: float, calibration_scores: Sequence[float] | None = None, adapt: bool = True,
                 window: int = 2000, gain: float = 1.0, seed: int = 0, horizon: int = 100):
        check(0.0 < rate < 1.0, "policy.rate", rate, "must be in (0, 1)")
        check(window >= 10, "policy.window", window, "must be >= 10")
        check(horizon >= 1, "policy.horizon", horizon, "must be >= 1")
        self.rate, self.adapt, self.gain, self.seed, self.horizon = rate, adapt, gain, seed, horizon
        calib = np.asarray([] if calibration_scores is None else calibration_scores, dtype=np.float64)
        calib = calib[np.isfinite(calib)]
        if not adapt and calib.size == 0:
            raise InvalidArgumentError("calibration_scores", "[]", "a fixed (adapt=False) budget needs calibration scores")
        self._window = np.empty(window, dtype=np.float64)
        keep = calib[-window:]
        self._window[:keep.size] = keep
        self._filled, self._next = keep.size, keep.size % window
        self.decisions = self.requests = 0
        self._fixed = self._cut(rate) if not adapt else None
        self._cache: tuple[int, float, tuple[float, float]] = (-_RECUT_EVERY, -1.0, (math.inf, 0.0))

    @property
    def realised_rate(self) -> float:
        return self.requests / self.decisions if self.decisions else 0.0

    def _cut(self, rate: float) -> tuple[float, float]:
        """(threshold, fraction of scores equal to it to request) so that `rate` of the window is requested."""
        scores = self._window[:self._filled]
        if scores.size == 0:
            return math.inf, 0.0
        index = min(int(math.ceil((1.0 - rate) * (scores.size - 1))), scores.size - 1)  # quantile, "higher"
        threshold = float(np.partition(scores, index)[index])
        above = np.count_nonzero(scores > threshold) / scores.size
        equal = np.count_nonzero(scores == threshold) / scores.size
        return threshold, min(max((rate - above) / equal, 0.0), 1.0) if equal else 0.0

    def _cached_cut(self, target: float) -> tuple[float, float]:
        # the window moves by one score per decision: re-cut every few decisions or when the target moves
        at, last_target, cut = self._cache
        if self.decisions - at >= _RECUT_EVERY or abs(target - last_target) > 0.01:
            cut = self._cut(target)
            self._cache = (self.decisions, target, cut)
        return cut

    def decide(self, state: PolicyState) -> Decision:
        decision = forced(state) or self._decide(state)
        self.decisions += 1
        self.requests += int(decision.request)
        if self.adapt and math.isfinite(state.score):
            self._window[self._next] = state.score
            self._next = (self._next + 1) % self._window.size
            self._filled = min(self._filled + 1, self._window.size)
        return decision

    def _decide(self, state: PolicyState) -> Decision:
        if math.isnan(state.score):
            return Decision(False, "no consistency score", state.score)
        target = self.rate
        if self.adapt:
            # integral feedback on the request deficit (forced requests count): behind the budget by
            # `horizon` requests raises the target rate by `gain`; keeps the long-run rate on target
            deficit = self.rate * self.decisions - self.requests
            target = min(max(self.rate + self.gain * deficit / self.horizon, 0.0), 1.0)
        if self._fixed is None and self._filled < _MIN_SCORES:  # too few scores to cut: draw at the target rate
            hit = uniform(self.seed, state.user_id, state.event_index) < target
            return Decision(hit, f"budget warm-up: random draw at rate {target:.3f}", state.score)
        threshold, tie = self._fixed or self._cached_cut(target)
        if state.score == threshold:  # ties: request the fraction of them that meets the rate
            hit = uniform(self.seed, state.user_id, state.event_index) < tie
            relation = f"= budget threshold {threshold:.3f} (tie, {'drawn' if hit else 'not drawn'})"
        else:
            hit = state.score > threshold
            relation = f"{'>' if hit else '<'} budget threshold {threshold:.3f}"
        return Decision(hit, f"consistency {state.score:.3f} {relation} (target rate {self.rate:g}, "
                             f"realised {self.realised_rate:.3f})", state.score, threshold)


def calibrate_threshold(scores: Sequence[float], rate: float) -> float:
    """The threshold that a fraction `rate` of the calibration scores reach (score >= threshold)."""
    arr = np.asarray(scores, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise InvalidArgumentError("scores", "[]", "no finite calibration scores")
    return float(np.quantile(arr, 1.0 - rate, method="higher"))


@dataclass(frozen=True)
class PolicyConfig:
    """Which request policy a session uses (see the module docstring)."""

    kind: Literal["never", "always", "every", "random", "threshold", "budget"] = "budget"
    n: int = 5  # every
    rate: float = 0.1  # random, budget
    threshold: float = 20.0  # threshold
    adapt: bool = True  # budget: learn the score distribution online and steer to the target rate
    window: int = 2000  # budget: number of recent scores kept
    seed: int = 0


def build_policy(config: PolicyConfig, calibration_scores: Sequence[float] | None = None) -> Policy:
    if config.kind == "never":
        return Never()
    if config.kind == "always":
        return Always()
    if config.kind == "every":
        return EveryN(config.n)
    if config.kind == "random":
        return RandomRate(config.rate, config.seed)
    if config.kind == "threshold":
        return Threshold(config.threshold)
    if config.kind == "budget":
        return Budget(config.rate, calibration_scores, config.adapt, config.window, seed=config.seed)
    raise InvalidArgumentError("policy.kind", config.kind, "must be never, always, every, random, threshold or budget")


def parse_policy(text: str, seed: int = 0) -> Policy:
    """'never', 'always', 'every:N', 'random:R', 'threshold:T', 'budget:R' (CLI spelling)."""
    kind, _, arg = text.partition(":")
    try:
        if kind in ("never", "always") and not arg:
            return build_policy(PolicyConfig(kind=kind))
        if kind == "every":
            return build_policy(PolicyConfig(kind=kind, n=int(arg)))
        if kind in ("random", "budget"):
            return build_policy(PolicyConfig(kind=kind, rate=float(arg), seed=seed))
        if kind == "threshold":
            return build_policy(PolicyConfig(kind=kind, threshold=float(arg)))
    except ValueError:
        pass
    raise InvalidArgumentError("policy", text, "must be never, always, every:N, random:R, threshold:T or budget:R")
