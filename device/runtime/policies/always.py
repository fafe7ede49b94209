"""`always`: a fresh list after every event (the upper bound on freshness, and on cloud calls)."""
from __future__ import annotations

from device.runtime.policies import POLICIES, Decision, RequestPolicy


@POLICIES.register("always")
class Always(RequestPolicy):
    name = "always"

    def _decide(self, state):
        return Decision(True, "policy always", state.score)
