"""DeviceSession: one user's real-time history, cached cloud candidates, SRM re-ranking, fusion and request policy.

Synchronous use (the CLI, a phone): give the session a candidate `source` (an object with
`get_candidates(CandidateRequest) -> CandidateResponse`, e.g. device.runtime.client.CloudClient) and call
`on_event(item)`; when the policy asks for a fresh list (and no back-off is running) the session
calls the source itself and returns the slate built from the new list.

Driven use (the simulator, batching requests of many sessions made at the same virtual instant):
build the session with `source=None`; `on_event(item)` then only updates the history, re-ranks,
fuses, decides and records the wish. After the events of an instant, the driver collects the
sessions with `needs_refresh and ready_to_request()`, takes `build_request()` from each, answers
them in one batch, and hands each answer to `apply_candidates(response)` (or the error to
`report_failure(exc)`). `apply_candidates` validates the list; a list with unknown ids,
duplicates, non-finite scores or nothing showable is rejected with a typed error
(UnknownItemError / InvalidArgumentError) AFTER the session has recorded it as a failure.

A growing catalogue: the cloud may know items the SRM does not (ids above its manifest's `num_items`, added after
it was made). They are valid everywhere: in a list they are ranked like the items the SRM never trained on (a
neutral SRM score, so fusion places them by the LLM's term), never dropped; in the history they are kept (and sent
to the cloud) but left out of the SRM's input window, which has no embedding for them.

Failure handling: the cached list stays in use (items consumed meanwhile are dropped), the slate
is marked stale, requests back off exponentially (`backoff_initial_ms` doubling to
`backoff_max_ms`) and the wish to refresh is kept until a list arrives. Events that happened while
offline are not lost: every request carries the most recent `max_request_history` items of the
full history. A slate never holds a consumed item or an id outside the catalogue; with no usable
list (cold start while offline) it is empty. Ids must be >= 1; there is no upper bound on the
device (the cloud's catalogue may have grown past the SRM's). If the SRM cannot score (a runtime error, non-finite
output) the slate falls back to the LLM's order (`Slate.mode == "llm"`) and the consistency score
is NaN (policies then do not request on consistency). A model swapped in by a
`device.runtime.ModelHolder` (pass the holder as the reranker) is used from the next event on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from device.runtime.backend import Reranker
from device.runtime.consistency import MEASURES, ListContext
from device.runtime.fusion import FusionConfig, ListFusion, neutral_untrained, untrained_mask
from device.runtime.policies import Decision, Policy, PolicyState
from device.runtime.scorers import session_scorer
from shared.config import check
from shared.errors import InvalidArgumentError, LSC4RecError, UnknownItemError
from shared.records import CandidateRequest, CandidateResponse
from shared.wire import check_items


class CandidateSource(Protocol):
    def get_candidates(self, request: CandidateRequest) -> CandidateResponse: ...


@dataclass(frozen=True)
class SessionConfig:
    """Per-device settings of a session."""

    user_id: str = "user"
    slate_size: int = 10  # K
    num_candidates: int = 50  # N asked from the cloud (the list length L of the fusion rule)
    measure: str = "lsc4rec"  # consistency measure: a name of device.runtime.consistency.MEASURES
    overlap_k: int = 10  # k of the "overlap" measure
    max_request_history: int = 200  # most recent items sent with a request
    vector_cache: int = 4096  # a catalogue-free device: item vectors it keeps (about 256 KB at 64 dimensions)
    backoff_initial_ms: float = 1000.0
    backoff_max_ms: float = 60000.0
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        check(bool(self.user_id), "user_id", self.user_id, "must not be empty")
        check(self.slate_size >= 1, "slate_size", self.slate_size, "must be >= 1")
        check(self.num_candidates >= self.slate_size, "num_candidates", self.num_candidates, "must be >= slate_size")
        check(self.measure in MEASURES, "measure", self.measure,
              f"unknown measure (known: {', '.join(MEASURES.names())})")
        check(self.max_request_history >= 1, "max_request_history", self.max_request_history, "must be >= 1")
        check(self.vector_cache >= 2 * self.num_candidates, "vector_cache", self.vector_cache,
              f"must hold at least two lists' vectors (2 x num_candidates = {2 * self.num_candidates})")
        check(0 < self.backoff_initial_ms <= self.backoff_max_ms, "backoff_initial_ms", self.backoff_initial_ms,
              "must be > 0 and <= backoff_max_ms")


@dataclass(frozen=True)
class Slate:
    """What the user is shown: top-K items, best first, never consumed, never outside the catalogue."""

    items: tuple[int, ...]
    scores: tuple[float, ...]
    stale: bool  # the last request failed (or nothing was ever received) and the list is older than wanted
    mode: str  # "fusion", "llm" (the SRM could not score), or "empty"
    generator_version: str = ""
    model_version: str = ""


@dataclass(frozen=True)
class EventResult:
    """The answer to one event: the slate to show next and the request decision with its reason."""

    slate: Slate
    decision: Decision
    requested: bool  # a request was sent during this call (synchronous use)
    request_ok: bool | None = None  # its outcome; None when nothing was sent
    note: str = ""  # why a wanted request was not sent, or why it failed


class DeviceSession:
    """One user's device state; see the module docstring for the synchronous and the driven use."""

    def __init__(self, config: SessionConfig, reranker: Reranker, policy: Policy, now_ms: Callable[[], float],
                 source: CandidateSource | None = None, history: tuple[int, ...] = (),
                 candidates: CandidateResponse | None = None):
        self.config, self.reranker, self.policy, self.now_ms, self.source = config, reranker, policy, now_ms, source
        self.num_items = reranker.manifest.num_items  # the SRM's catalogue; the cloud's may be larger
        self._mask_for, self._mask = None, None  # the model whose untrained items _mask marks
        self._measure = MEASURES.get(config.measure, field="measure")
        self.history: list[int] = list(check_items("history", history, None))  # extended by on_event only
        self._srm = session_scorer(reranker, self.history, config.vector_cache)
        if self._srm.catalogue_free and self._measure.needs_catalogue:
            raise InvalidArgumentError("measure", config.measure, "needs the whole catalogue, which a catalogue-free "
                                       "device (user-encoder model) does not hold")
        if self._measure.needs_partition and not self._srm.has_partition:
            raise InvalidArgumentError("measure", config.measure, "needs a user encoder with a partition head "
                                       "(`lsc4rec export srm --format user-encoder --data ...`)")
        # A catalogue measure scores every item on each event (one model call; the list's scores are a part of it).
        self._catalogue = (np.arange(1, self.num_items + 1, dtype=np.int64)
                           if self._measure.needs_catalogue else None)
        self._consumed = set(self.history)
        if self._catalogue is not None:  # showable[i]: item i may be shown (not consumed; 0 is padding)
            self._showable = np.ones(self.num_items + 1, dtype=bool)
            self._showable[0] = False
            self._showable[[i for i in self.history if i <= self.num_items]] = False
        self.event_index = 0
        self.events_since_list = 0  # events since the last list arrived (sent with the next request)
        self.requests_sent = self.failures = 0
        self.last_error = ""
        self._items = np.zeros(0, dtype=np.int64)  # cached list in the LLM's order
        self._known = np.zeros(0, dtype=bool)  # per unconsumed slot: the SRM can score the id
        self._llm_scores = np.zeros(0, dtype=np.float64)
        self._alive = np.zeros(0, dtype=bool)
        self._slot_of: dict[int, int] = {}  # item id -> its slot in the cached list
        # for a context measure: the items consumed since the cached list arrived and their slots in it (-1: absent),
        # and the first list of the session (with the cached one, the pool of items the device holds)
        self._since: list[int] = []
        self._since_slots: list[int] = []
        self._since_srm_ranks: list[int] = []  # the consumed item's rank in the SRM order of the list before it
        self._rank_of: dict[int, int] = {}  # after the last event: unconsumed list item -> its SRM rank
        self._first_items: np.ndarray | None = None
        self._alive_changed()
        self._generator_version = ""
        self._wants = candidates is None
        self._stale = candidates is None
        self._backoff_ms, self._next_attempt_ms = config.backoff_initial_ms, -math.inf
        self.last_score = math.nan
        self._slate = Slate((), (), True, "empty")
        if candidates is not None:
            self.apply_candidates(candidates)

    # --- events -------------------------------------------------------------------------------
    def on_event(self, item: int) -> EventResult:
        """Append `item` to the history, re-rank, fuse, decide; fetch synchronously if a source is set."""
        item = int(item)
        if item < 1:
            raise UnknownItemError("item", item, "not an item id (ids start at 1)")
        self.history.append(item)
        self._consumed.add(item)
        if self._catalogue is not None and item <= self.num_items:
            self._showable[item] = False
        if self._srm.on_item(item):  # a new model version: the cached list's vectors are of the old one
            self._wants = True
            self._alive_changed()
        slot = self._slot_of.get(item)
        if self._measure.needs_context:  # only a context measure reads them (they grow until the next list)
            self._since.append(item)
            self._since_slots.append(-1 if slot is None else slot)
            self._since_srm_ranks.append(self._rank_of.get(item, -1))
        if slot is not None and self._alive[slot]:
            self._alive[slot] = False
            self._alive_changed()
        self.event_index += 1
        self.events_since_list += 1
        self._rebuild()
        decision = self.policy.decide(self.policy_state())
        retry = "retrying a request that failed; " if self._wants and not decision.request else ""
        self._wants = self._wants or decision.request
        if not self._wants:
            return EventResult(self._slate, decision, requested=False)
        if self.source is None:
            return EventResult(self._slate, decision, requested=False, note="request left to the driver")
        if not self.ready_to_request():
            return EventResult(self._slate, decision, requested=False,
                               note=f"backing off until t={self._next_attempt_ms:.0f} ms")
        ok, note = self.refresh()
        return EventResult(self._slate, decision, requested=True, request_ok=ok, note=retry + note)

    def slate(self) -> Slate:
        return self._slate

    def receive_vectors(self, vectors) -> None:
        """A catalogue-free device: item vectors that reached it outside a list (e.g. with the item the user opens,
        as its title and picture do); checked like a list's (VectorError), kept in the cache, and a history item
        that lacked one is taken into the user state. A device whose model holds the catalogue ignores them."""
        self._srm.receive(vectors)

    def policy_state(self) -> PolicyState:
        return PolicyState(self.config.user_id, self.event_index, self.events_since_list, self.last_score,
                           self._slots.size, self.config.slate_size)

    # --- requests -----------------------------------------------------------------------------
    @property
    def needs_refresh(self) -> bool:
        """The policy (or a failed request) wants a fresh list."""
        return self._wants

    @property
    def stale(self) -> bool:
        return self._stale

    def ready_to_request(self) -> bool:
        """No back-off running at the session's clock."""
        return self.now_ms() >= self._next_attempt_ms

    def build_request(self) -> CandidateRequest:
        """The request for a fresh list from the whole recent history (offline events included)."""
        self.requests_sent += 1
        return CandidateRequest(
            user_id=self.config.user_id, history=tuple(self.history[-self.config.max_request_history:]),
            num_candidates=self.config.num_candidates, request_id=f"{self.config.user_id}-{self.requests_sent}",
            device_model_version=self.reranker.manifest.version, **self._srm.request_fields())

    def refresh(self) -> tuple[bool, str]:
        """Synchronous request through `source`; a typed failure keeps the cached list and backs off."""
        if self.source is None:
            raise InvalidArgumentError("source", None, "refresh() needs a candidate source")
        try:
            response = self.source.get_candidates(self.build_request())
        except LSC4RecError as exc:  # unreachable, slow or failing cloud (the client maps its errors to these)
            self.report_failure(exc)
            return False, f"{type(exc).__name__}: {exc}"
        try:
            self.apply_candidates(response)
        except LSC4RecError as exc:  # a rejected list, already recorded as a failure
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    def report_failure(self, error: BaseException | None = None) -> None:
        """The request failed: keep serving the cached list, mark it stale, back off exponentially."""
        self.failures += 1
        self.last_error = "" if error is None else f"{type(error).__name__}: {error}"
        self._wants = self._stale = True
        self._next_attempt_ms = self.now_ms() + self._backoff_ms
        self._backoff_ms = min(2.0 * self._backoff_ms, self.config.backoff_max_ms)
        self._slate = Slate(self._slate.items, self._slate.scores, True, self._slate.mode,
                            self._slate.generator_version, self._slate.model_version)

    def apply_candidates(self, response: CandidateResponse) -> Slate:
        """Validate and cache a fresh list; a bad list is recorded as a failure, then raised as a typed error."""
        try:
            items, scores = self._validate(response)
            self._srm.receive(response.vectors)  # checked first: vectors of another model version are refused
        except LSC4RecError as exc:
            self.report_failure(exc)
            raise
        self._items, self._llm_scores = items, scores
        self._alive = np.array([int(i) not in self._consumed for i in items], dtype=bool)
        self._slot_of = {item: slot for slot, item in enumerate(items.tolist())}
        self._since, self._since_slots, self._since_srm_ranks = [], [], []
        if self._first_items is None:
            self._first_items = items
        self._alive_changed()
        self._generator_version = response.generator_version
        self._wants = self._stale = False
        self.events_since_list = 0
        self._backoff_ms, self._next_attempt_ms = self.config.backoff_initial_ms, -math.inf
        self._rebuild()
        return self._slate

    def _validate(self, response: CandidateResponse) -> tuple[np.ndarray, np.ndarray]:
        items = np.array([c.item for c in response.candidates], dtype=np.int64)
        scores = np.array([c.score for c in response.candidates], dtype=np.float64)
        check_items("candidates.item", items.tolist(), None)  # ids beyond the SRM's catalogue are ranked as untrained
        if len(set(items.tolist())) != items.size:
            raise InvalidArgumentError("candidates.item", items.tolist(), "contains duplicates")
        if not np.isfinite(scores).all():
            raise InvalidArgumentError("candidates.score", scores.tolist(), "must be finite")
        if not any(int(i) not in self._consumed for i in items):
            raise InvalidArgumentError("candidates", f"<{items.size} items>", "no unconsumed candidate to show")
        return items, scores

    # --- re-ranking ---------------------------------------------------------------------------
    def _alive_changed(self) -> None:
        """Recompute what depends only on the unconsumed part of the cached list (not on the history)."""
        self._slots = np.flatnonzero(self._alive)  # positions j in the list the cloud sent
        self._pool = self._items[self._slots]  # their ids, in the LLM's order
        self._known = self._srm.known(self._pool)  # the others are new to the SRM: not scored by it
        self._scored = self._pool if self._known.all() else self._pool[self._known]
        self._fusion = (ListFusion(self.config.fusion, self._llm_scores[self._slots], positions=self._slots,
                                   length=self._items.size) if self._slots.size else None)

    def _rebuild(self) -> None:
        """Re-rank the unconsumed cached candidates on the current history, fuse, score consistency."""
        slots, items = self._slots, self._pool
        if slots.size == 0:
            self.last_score = math.nan
            self._slate = Slate((), (), self._stale, "empty", self._generator_version, self.reranker.manifest.version)
            return
        known, scored = self._known, self._scored  # what the SRM can score
        if self._catalogue is None:
            everything, logits = None, self._srm.logits(scored) if scored.size else np.zeros(0)
        else:  # one call over the catalogue; the list's logits are a part of it
            everything = self._srm.logits(self._catalogue)  # (N,): item i at i - 1
            logits = None if everything is None else everything[scored - 1]
        k = self.config.slate_size
        if logits is None:  # the model could not score: fall back to the LLM's order
            self.last_score = math.nan
            top = np.arange(min(k, slots.size))
            self._slate = Slate(tuple(items[top].tolist()), tuple((-(slots[top] + 1.0)).tolist()),
                                self._stale, "llm", self._generator_version, self.reranker.manifest.version)
            return
        if scored.size != items.size:
            logits = _with_placeholders(logits, known)
        logits = neutral_untrained(items, logits, self._untrained_mask(), self.num_items)
        fused = self._fusion.fuse(logits)
        order = (-fused).argsort(kind="stable")[:k]  # ties keep the LLM order
        if self._measure.needs_context:  # what the device holds, no catalogue scan
            # each unconsumed item's rank in the SRM's order (ties: the LLM's order), read at the next event
            self._rank_of = dict(zip(items[(-logits).argsort(kind="stable")].tolist(), range(items.size)))
            self.last_score = self._context_score(logits, scored)
        elif everything is None:
            self.last_score = self._measure.of_list(
                logits, num_invalid=max(self.config.num_candidates - slots.size, 0), k=self.config.overlap_k)
        else:  # e.g. "regret": what the SRM now wants from the whole catalogue that the cached list lacks
            self.last_score = self._measure.of_catalogue(np.concatenate([[0.0], everything]), scored, self._showable,
                                                         k)
        self._slate = Slate(tuple(items[order].tolist()), tuple(fused[order].tolist()),
                            self._stale, "fusion", self._generator_version, self.reranker.manifest.version)

    def _context_score(self, logits: np.ndarray, scored: np.ndarray) -> float:
        """A context measure's score (see consistency.ListContext) after the list's logits are known."""
        held, in_list = np.zeros(0), np.zeros(0, dtype=bool)
        if self._measure.needs_held:
            first = self._first_items if self._first_items is not None else np.zeros(0, dtype=np.int64)
            extra = np.array(sorted({int(i) for i in first.tolist()} - self._consumed - set(scored.tolist())),
                             dtype=np.int64)
            extra = extra[self._srm.known(extra)]
            extra_logits = self._srm.logits(extra) if extra.size else np.zeros(0)
            if extra_logits is None:
                return math.nan
            known_logits = logits if scored.size == logits.size else logits[self._known]
            held = np.concatenate([known_logits, extra_logits])
            in_list = np.concatenate([np.ones(known_logits.size, dtype=bool), np.zeros(extra.size, dtype=bool)])
        return self._measure.of_context(ListContext(
            logits, np.asarray(self._since, dtype=np.int64), np.asarray(self._since_slots, dtype=np.int64),
            int(self._items.size), self.config.slate_size, held, in_list,
            np.asarray(self._since_srm_ranks, dtype=np.int64),
            self._srm.log_partition() if self._measure.needs_partition else None))

    def _untrained_mask(self) -> np.ndarray | None:
        """The current model's untrained items as a lookup table, rebuilt only when the model is swapped."""
        manifest = self.reranker.manifest
        if self._mask_for is not manifest:
            self._mask_for, self._mask = manifest, untrained_mask(manifest.untrained_items, manifest.num_items)
        return self._mask


def _with_placeholders(logits: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(L,) logits for a list whose items beyond the SRM's catalogue (~known) have none: they get the mean of the
    scored ones (0 when none is), which neutral_untrained then treats as any untrained item's."""
    out = np.full(known.size, float(logits.mean()) if logits.size else 0.0)
    out[known] = logits
    return out
