"""`never`: only the forced requests (no list, fewer than K unconsumed candidates)."""
from __future__ import annotations

from device.runtime.policies import POLICIES, Decision, RequestPolicy


@POLICIES.register("never")
class Never(RequestPolicy):
    name = "never"

    def _decide(self, state):
        return Decision(False, "policy never", state.score)
