"""`budget:R`: consistency under a request budget - the top R fraction of inconsistency scores ask for a fresh list.

The score distribution comes from a calibration replay (`calibration_scores`) and/or is learnt online from the
scores the policy sees (a window); with `adapt` a feedback term steers the realised rate (forced requests
included) back to the target. Share ONE Budget across the sessions of a fleet (as the simulator does): per user
there are too few events to calibrate on.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from device.runtime.policies import POLICIES, Decision, PolicySpec, PolicyState, RequestPolicy, uniform
from device.runtime.policies.threshold import Threshold
from shared.config import check
from shared.errors import InvalidArgumentError

_RECUT_EVERY = 8  # decisions between two recomputations of the budget threshold
_MIN_SCORES = 20  # below this many scores the budget policy draws at random at its target rate


@POLICIES.register("budget")
class Budget(RequestPolicy):
    """Consistency under a request budget: the top `rate` fraction of scores ask for a fresh list."""

    name = "budget"
    usage = "budget:R"
    budgeted = True
    calibrated = True
    fleet_state = True

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

    def label(self) -> str:
        return f"budget:{self.rate:.3f}"

    @classmethod
    def parse(cls, arg: str, seed: int) -> "Budget":
        return cls(float(arg), seed=seed)

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> RequestPolicy:
        """With a calibration kept fixed, the threshold policy at the calibrated threshold (`budget_mode =
        "threshold"` in the simulator); otherwise this policy, warm-started with the calibration's scores."""
        calibration = spec.calibration
        if calibration is not None and not calibration.adaptive:
            return Threshold(calibration.threshold)
        scores = calibration.scores if calibration is not None else ()
        return cls(spec.rate, scores or None, adapt=True, seed=spec.seed)

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
        decision = super().decide(state)
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
