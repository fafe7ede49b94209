"""Request policies: when a device asks the cloud for a fresh candidate list, each decision with its reason.

A policy maps a `PolicyState` (what the session knows after an event) to a `Decision`. Every policy first
applies the two forced rules (`forced`): request when there are no candidates, or when fewer than K unconsumed
candidates remain. The built-in policies are one module each in this package (never, always, every, random,
threshold, budget); `POLICIES` finds them by name.

Adding a policy is one new module here: a `RequestPolicy` subclass registered under its name,

    @POLICIES.register("hourly")
    class Hourly(RequestPolicy):
        name = "hourly"
        usage = "hourly:H"
        ...

that name is its one spelling everywhere: `lsc4rec device run --policy hourly:2`, `policies = ["hourly"]` in a
simulator preset, the report. A policy's settings are its constructor's arguments; it builds itself from the CLI
spelling (`parse`) and from a `PolicySpec` (`from_spec`: what a fleet driver such as the simulator knows of a run:
its request budget, seed, fixed threshold and calibration).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

from shared.errors import InvalidArgumentError
from shared.registry import Registry


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
    """What a session needs of a policy (a `RequestPolicy`, or any object with these)."""

    name: str

    def decide(self, state: PolicyState) -> Decision: ...


@dataclass(frozen=True)
class Calibration:
    """What a calibration replay (on events before the live ones) found for one request budget."""

    threshold: float  # the fixed score threshold whose request rate there was closest to the budget
    scores: tuple[float, ...] = ()  # the scores the policy met there (percentiles): an adaptive budget starts from them
    adaptive: bool = False  # steer online to the budget from `scores` instead of keeping `threshold` fixed


@dataclass(frozen=True)
class PolicySpec:
    """A policy by name with what a fleet driver knows of one run; each policy class reads the fields it uses.

    Picklable and immutable, so every run (and every Ray worker) builds its own policy object: a stateful one
    (a fleet-wide budget) never carries state from one run into the next.
    """

    name: str
    rate: float | None = None  # the run's request budget (fraction of events); None for a policy without one
    seed: int = 0
    threshold: float = math.inf  # the fixed score threshold of the `threshold` policy
    calibration: Calibration | None = None  # for policies that are `calibrated`

    def build(self) -> "RequestPolicy":
        return POLICIES.get(self.name, field="policy").from_spec(self)


class RequestPolicy:
    """Base of the built-in policies: the forced rules, then the policy's own `_decide`.

    Class attributes tell a fleet driver (the simulator's grid) how to run the policy:
    `budgeted` - it is run once per request budget, with `PolicySpec.rate` set to it;
    `per_seed` - its decisions are random draws, so it runs for every seed (the others once);
    `calibrated` - it holds a budget through a calibration replay (`PolicySpec.calibration`), and is compared with
    random requests at the rate it realised.
    `fleet_state` - one object shared by a fleet whose decisions depend on the order of all devices' events.
    """

    name: ClassVar[str] = "base"
    usage: ClassVar[str] = ""  # the CLI spelling, e.g. "every:N" (default: the name alone)
    budgeted: ClassVar[bool] = False
    per_seed: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False
    fleet_state: bool = False
    threshold: float | None = None  # a fixed score threshold, when the policy has one (reports show it)

    def decide(self, state: PolicyState) -> Decision:
        return forced(state) or self._decide(state)

    def _decide(self, state: PolicyState) -> Decision:
        raise NotImplementedError

    def label(self) -> str:
        """The policy with its settings, in its CLI spelling (reports, progress lines)."""
        return self.name

    @classmethod
    def parse(cls, arg: str, seed: int) -> "RequestPolicy":
        """The policy from the text after 'name:' on the command line (ValueError when it does not fit)."""
        if arg:
            raise ValueError(f"{cls.name} takes no argument")
        return cls()

    @classmethod
    def from_spec(cls, spec: PolicySpec) -> "RequestPolicy":
        """The policy for one run of a fleet driver."""
        return cls()


POLICIES: Registry[type[RequestPolicy]] = Registry("policy", "device.runtime.policies")


def uniform(seed: int, user_id: str, event_index: int) -> float:
    """A deterministic uniform number in [0, 1) from (seed, user, event): replays draw the same numbers."""
    digest = hashlib.blake2b(f"{seed}|{user_id}|{event_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def forced(state: PolicyState) -> Decision | None:
    """The rules every policy obeys: no list, or fewer than K unconsumed candidates."""
    if state.remaining == 0:
        return Decision(True, "no candidates cached", state.score)
    if state.remaining < state.slate_size:
        return Decision(True, f"only {state.remaining} unconsumed candidates < K={state.slate_size}", state.score)
    return None


def usages() -> str:
    """Every policy's CLI spelling, for help texts and errors."""
    return ", ".join(cls.usage or name for name, cls in POLICIES.items())


def parse_policy(text: str, seed: int = 0) -> RequestPolicy:
    """A policy from its CLI spelling 'name' or 'name:arg' (e.g. never, every:5, budget:0.2)."""
    name, _, arg = text.partition(":")
    if name not in POLICIES:
        raise InvalidArgumentError("policy", text, f"unknown policy (known: {usages()})")
    cls = POLICIES.get(name)
    try:
        return cls.parse(arg, seed)
    except ValueError as exc:
        raise InvalidArgumentError("policy", text, f"spelled {cls.usage or name} ({exc})") from None
