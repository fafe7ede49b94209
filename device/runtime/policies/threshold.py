"""`threshold:T`: a fresh list when the inconsistency score reaches a fixed threshold T."""
from __future__ import annotations

import math

from device.runtime.policies import POLICIES, Decision, PolicySpec, RequestPolicy
from shared.config import check


@POLICIES.register("threshold")
class Threshold(RequestPolicy):
    name = "threshold"
    usage = "threshold:T"

    def __init__(self, threshold: float):
        check(math.isfinite(threshold), "policy.threshold", threshold, "must be finite")
        self.threshold = threshold

    def _decide(self, state):
        if math.isnan(state.score):
            return Decision(False, "no consistency score", state.score, self.threshold)
        hit = state.score >= self.threshold
        return Decision(hit, f"consistency {state.score:.3f} {'>=' if hit else '<'} threshold {self.threshold:.3f}",
                        state.score, self.threshold)

    def label(self) -> str:
        return f"threshold:{self.threshold:.3f}"

    @classmethod
    def parse(cls, arg: str, seed: int) -> "Threshold":
        return cls(float(arg))

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> "Threshold":
        return cls(spec.threshold)
