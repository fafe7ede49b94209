"""Micro-batcher: gathers concurrent candidate requests into one batched `generate` call."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
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


@dataclass
class _Pending:
    request: CandidateRequest
    deadline: float | None  # time.monotonic() seconds, None = no deadline
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    waiter: asyncio.Future | None = None  # an event loop's future, woken once `future` is settled (generate_async)


def _late() -> DeadlineError:
    return DeadlineError("the deadline passed while the request waited for the generator")


def _wake(waiters: list[asyncio.Future]) -> None:
    """On the event loop: wake the coroutines of one batch (their answers are in their own `future`)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


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

    def submit(self, request: CandidateRequest, deadline: float | None = None,
               waiter: asyncio.Future | None = None) -> Future:
        """Queue a validated request; the future resolves to its candidate list (best first)."""
        if self._stopping.is_set() or self._thread is None:
            raise UnavailableError("the generator is not accepting requests (draining or not started)")
        pending = _Pending(request, deadline, waiter=waiter)
        self._queue.put(pending)
        return pending.future

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
        """
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        future = self.submit(request, deadline, waiter)
        when = None if deadline is None else loop.time() + max(0.0, deadline - self._clock())
        try:
            async with asyncio.timeout_at(when):
                await waiter
        except TimeoutError:
            future.cancel()  # still queued: the worker drops it instead of computing it
            raise _late() from None
        except asyncio.CancelledError:
            future.cancel()  # the call went away (client cancelled, deadline hit, server stopping)
            raise
        try:
            return future.result(timeout=0)
        except CancelledError:  # the worker dropped it: its deadline passed in the queue
            raise _late() from None

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
            waiters: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = defaultdict(list)
            for p in batch:
                if p.waiter is not None:
                    waiters[p.waiter.get_loop()].append(p.waiter)
            for loop, group in waiters.items():
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
                p.future.cancel()
            elif p.future.set_running_or_notify_cancel():
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
                group[0].future.set_exception(exc)
                return
            # One bad row must not fail its neighbours: run them one by one.
            log.warning("[request_id=%s] batch of %d failed (%s: %s); retrying one by one",
                        ",".join(p.request.request_id for p in group), len(group), type(exc).__name__, exc)
            for p in group:
                self._generate_one(n, p)
            return
        for p, candidates in zip(group, lists):
            p.future.set_result(candidates)

    def _generate_one(self, n: int, p: _Pending) -> None:
        try:
            p.future.set_result(self.generator.generate([p.request.history], n, [p.request.exclude])[0])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, mapped at the boundary
            p.future.set_exception(exc)
