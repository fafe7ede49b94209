"""`every:N`: a fresh list once N events have passed since the last one."""
from __future__ import annotations

from device.runtime.policies import POLICIES, Decision, PolicySpec, RequestPolicy
from shared.config import check


@POLICIES.register("every")
class EveryN(RequestPolicy):
    name = "every"
    usage = "every:N"
    budgeted = True

    def __init__(self, n: int):
        check(n >= 1, "policy.n", n, "must be >= 1")
        self.n = n

    def _decide(self, state):
        due = state.events_since_request >= self.n
        return Decision(due, f"{state.events_since_request} events since the last list, every {self.n}", state.score)

    def label(self) -> str:
        return f"every:{self.n}"

    @classmethod
    def parse(cls, arg: str, seed: int) -> "EveryN":
        return cls(int(arg))

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> "EveryN":
        """A budget r asks every round(1 / r) events."""
        return cls(max(1, int(round(1 / spec.rate))))
