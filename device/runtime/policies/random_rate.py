"""`random:R`: a fresh list with probability R after each event (the chance baseline of a request budget).

The draw is a hash of (seed, user, event index), so a replay draws the same numbers.
"""
from __future__ import annotations

from device.runtime.policies import POLICIES, Decision, PolicySpec, RequestPolicy, uniform
from shared.config import check


@POLICIES.register("random")
class RandomRate(RequestPolicy):
    name = "random"
    usage = "random:R"
    budgeted = True
    per_seed = True

    def __init__(self, rate: float, seed: int = 0):
        check(0.0 <= rate <= 1.0, "policy.rate", rate, "must be in [0, 1]")
        self.rate, self.seed = rate, seed

    def _decide(self, state):
        u = uniform(self.seed, state.user_id, state.event_index)
        return Decision(u < self.rate, f"random draw {u:.3f} {'<' if u < self.rate else '>='} rate {self.rate:g}",
                        state.score)

    def label(self) -> str:
        return f"random:{self.rate:.3f}"

    @classmethod
    def parse(cls, arg: str, seed: int) -> "RandomRate":
        return cls(float(arg), seed)

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> "RandomRate":
        """The run's budget as the rate (clipped to [0, 1]: a matched rate may come from a realised one)."""
        return cls(min(max(spec.rate, 0.0), 1.0), spec.seed)
