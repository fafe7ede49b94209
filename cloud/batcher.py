"""Micro-batcher: gathers concurrent candidate requests into one batched `generate` call."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Callable

from shared.config import check
from shared.errors import UnavailableError
from shared.generator import CandidateGenerator
from shared.records import Candidate, CandidateRequest

from cloud.errors import DeadlineError

log = logging.getLogger("lsc4rec.cloud.batcher")


@dataclass(frozen=True)
class BatcherConfig:
    """How requests are grouped: at most `max_batch_size`, waiting at most `max_wait_ms` for the batch to fill."""

    max_batch_size: int = 32  # 1 = no batching
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company

    def __post_init__(self):
        check(self.max_batch_size >= 1, "batch.max_batch_size", self.max_batch_size, "must be >= 1")
        check(0 <= self.max_wait_ms <= 1000, "batch.max_wait_ms", self.max_wait_ms, "must be in 0..1000")


class _Pending:
    """One queued request and the way its answer goes back to the caller.

    A thread's caller (`submit`) gets a concurrent `Future`. An event loop's caller (`generate_async`) gets
    the answer in `outcome`, handed to its loop future `waiter` by `_wake`: no Future, no lock per request.
    """

    __slots__ = ("request", "deadline", "submitted", "future", "waiter", "abandoned", "outcome")

    def __init__(self, request: CandidateRequest, deadline: float | None, submitted: float,
                 future: Future | None = None, waiter: asyncio.Future | None = None):
        self.request = request
        self.deadline = deadline  # time.monotonic() seconds, None = no deadline
        self.submitted = submitted
        self.future = future
        self.waiter = waiter
        self.abandoned = False  # (waiter) set on the loop once nobody waits: answered, late or cancelled
        self.outcome: tuple[list[Candidate] | None, BaseException | None] | None = None  # (waiter) result, error

    def claim(self) -> bool:
        """Worker, before the model runs: True if the answer is still wanted (then it is computed)."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return not self.abandoned

    def drop(self) -> None:
        """Worker: the deadline passed in the queue; the caller gets DEADLINE_EXCEEDED."""
        if self.future is not None:
            self.future.cancel()
        else:
            self.settle(None, _late())

    def settle(self, candidates: list[Candidate] | None, error: BaseException | None = None) -> None:
        """Worker: the answer (or the error) to the thread's future, or to `outcome` for the loop's `_wake`."""
        if self.future is None:
            self.outcome = (candidates, error)
        elif error is None:
            self.future.set_result(candidates)
        else:
            self.future.set_exception(error)


def _late() -> DeadlineError:
    return DeadlineError("the deadline passed while the request waited for the generator")


def _wake(batch: list[_Pending]) -> None:
    """On the event loop: hand the answers of one batch to their waiting coroutines."""
    for p in batch:
        waiter = p.waiter
        if waiter.done():  # late (its timer fired) or cancelled: nobody reads it
            continue
        if p.outcome is None:  # the worker failed before answering it (a bug): INTERNAL at the boundary
            waiter.set_exception(RuntimeError("the micro-batcher ended the batch without an answer"))
        elif p.outcome[1] is not None:
            waiter.set_exception(p.outcome[1])
        else:
            waiter.set_result(p.outcome[0])


def _expire(waiter: asyncio.Future) -> None:
    """On the event loop, at the request's deadline: answer DEADLINE_EXCEEDED unless the answer came first."""
    if not waiter.done():
        waiter.set_exception(_late())


class MicroBatcher:
    """One worker thread: takes the first waiting request, gathers more for up to `max_wait_ms`, runs them.

    Requests with the same `num_candidates` share one `generate` call. Requests whose deadline
    already passed (or whose caller gave up) are dropped before the model runs.
    """

    def __init__(self, generator: CandidateGenerator, config: BatcherConfig = BatcherConfig(),
                 on_batch: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.generator = generator
        self.config = config
        self._on_batch = on_batch or (lambda size: None)
        self._clock = clock
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.dropped = 0  # requests dropped because their deadline passed before the model ran

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> "MicroBatcher":
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: CandidateRequest, deadline: float | None = None) -> Future:
        """Queue a validated request; the future resolves to its candidate list (best first)."""
        return self._enqueue(_Pending(request, deadline, self._clock(), future=Future())).future

    def _enqueue(self, pending: _Pending) -> _Pending:
        if self._stopping.is_set() or self._thread is None:
            raise UnavailableError("the generator is not accepting requests (draining or not started)")
        self._queue.put(pending)
        return pending

    def generate(self, request: CandidateRequest, deadline: float | None = None) -> list[Candidate]:
        """Submit and wait until the answer or the deadline; a late request is cancelled (dropped)."""
        future = self.submit(request, deadline)
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            return future.result(timeout=timeout)
        except (TimeoutError, CancelledError):
            future.cancel()
            raise _late() from None

    async def generate_async(self, request: CandidateRequest, deadline: float | None = None) -> list[Candidate]:
        """`generate` for an event loop: the loop awaits the answer while the model runs in the worker thread.

        The worker wakes all the coroutines of a batch with one `call_soon_threadsafe` (not one per request):
        each hand-over to the loop releases the GIL, and a busy loop takes up to the switch interval to give it back.
        The deadline is a plain loop timer (cheaper than `asyncio.timeout_at`, which this path once used).
        """
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        pending = self._enqueue(_Pending(request, deadline, self._clock(), waiter=waiter))
        timer = None if deadline is None else loop.call_at(loop.time() + max(0.0, deadline - self._clock()),
                                                          _expire, waiter)
        try:
            return await waiter
        finally:
            pending.abandoned = True  # answered, late or the call went away: if still queued, the worker drops it
            if timer is not None:
                timer.cancel()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                if self._queue.empty():
                    return
                continue
            batch = [first] + self._gather(first)
            self._run_batch(batch)

    def _gather(self, first: _Pending) -> list[_Pending]:
        """What else is queued, after sleeping out the first request's wait if the batch is not full yet.

        One sleep rather than a blocking get per arriving request: under load the event loop does not wake
        this thread for every request (a thread switch and a GIL handoff each).
        """
        room = self.config.max_batch_size - 1
        more, stopped = self._take(room)
        wait = first.submitted + self.config.max_wait_ms / 1000.0 - self._clock()
        if not stopped and len(more) < room and wait > 0 and not self._stopping.is_set():
            time.sleep(wait)
            more += self._take(room - len(more))[0]
        return more

    def _take(self, most: int) -> tuple[list[_Pending], bool]:
        """Up to `most` queued requests, without blocking; True if the stop marker came (it is put back)."""
        taken: list[_Pending] = []
        while len(taken) < most:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)
                return taken, True
            taken.append(item)
        return taken, False

    def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            self._compute(batch)
        finally:
            waiting: dict[asyncio.AbstractEventLoop, list[_Pending]] = defaultdict(list)
            for p in batch:
                if p.waiter is not None:
                    waiting[p.waiter.get_loop()].append(p)
            for loop, group in waiting.items():
                try:
                    loop.call_soon_threadsafe(_wake, group)
                except RuntimeError:  # that loop is closed: nobody waits any more
                    pass

    def _compute(self, batch: list[_Pending]) -> None:
        now = self._clock()
        live = []
        for p in batch:
            if p.deadline is not None and p.deadline <= now:
                self.dropped += 1
                p.drop()
            elif p.claim():
                live.append(p)
            else:
                self.dropped += 1  # the caller gave up (cancelled) before we started
        groups: dict[int, list[_Pending]] = defaultdict(list)
        for p in live:
            groups[p.request.num_candidates].append(p)
        for n, group in groups.items():
            self._on_batch(len(group))
            self._generate_group(n, group)

    def _generate_group(self, n: int, group: list[_Pending]) -> None:
        try:
            lists = self.generator.generate([p.request.history for p in group], n,
                                            [p.request.exclude for p in group])
        except Exception as exc:  # noqa: BLE001 - handed to each caller, mapped at the boundary
            if len(group) == 1:
                group[0].settle(None, exc)
                return
            # One bad row must not fail its neighbours: run them one by one.
            log.warning("[request_id=%s] batch of %d failed (%s: %s); retrying one by one",
                        ",".join(p.request.request_id for p in group), len(group), type(exc).__name__, exc)
            for p in group:
                self._generate_one(n, p)
            return
        for p, candidates in zip(group, lists):
            p.settle(candidates)

    def _generate_one(self, n: int, p: _Pending) -> None:
        try:
            p.settle(self.generator.generate([p.request.history], n, [p.request.exclude])[0])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, mapped at the boundary
            p.settle(None, exc)
