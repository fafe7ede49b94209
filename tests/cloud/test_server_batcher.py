"""Micro-batcher: concurrent requests share one generate call; late ones are dropped; errors stay per row."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cloud.batcher import BatcherConfig, MicroBatcher
from cloud.errors import DeadlineError
from shared.errors import ConfigError, UnavailableError
from shared.records import CandidateRequest
from tests.cloud.test_server import GatedGenerator


def req(history=(1, 2), n=3, user="u") -> CandidateRequest:
    return CandidateRequest(user, tuple(history), n)


def test_concurrent_requests_share_one_generate_call():
    gen = GatedGenerator()
    sizes = []
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=50), on_batch=sizes.append).start()
    try:
        gen.gate.clear()
        first = batcher.submit(req())  # occupies the generator while the others queue
        assert gen.entered.wait(5)
        rest = [batcher.submit(req(history=(i,))) for i in range(3, 13)]  # 10 waiting
        assert batcher.queue_depth == 10
        gen.gate.set()
        results = [f.result(5) for f in [first] + rest]
    finally:
        batcher.stop()
    assert gen.batches == [1, 8, 2]  # capped at max_batch_size
    assert sizes == [1, 8, 2]
    assert [c.item for c in results[1]] == [50, 49, 48]
    assert all(3 not in [c.item for c in r] for r in results[1:2])


def test_a_request_arriving_within_the_wait_joins_the_first_ones_batch():
    gen = GatedGenerator()
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=1000)).start()
    try:
        first = batcher.submit(req())  # the worker was idle: it waits up to 1 s for company
        time.sleep(0.05)
        second = batcher.submit(req(history=(4,)))
        assert len(first.result(5)) == 3 and len(second.result(5)) == 3
    finally:
        batcher.stop()
    assert gen.batches == [2]


def test_different_n_are_separate_calls_and_each_gets_its_own_length():
    gen = GatedGenerator()
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=50)).start()
    try:
        gen.gate.clear()
        blocker = batcher.submit(req())
        assert gen.entered.wait(5)
        futures = [batcher.submit(req(n=n)) for n in (2, 4, 2, 4)]
        gen.gate.set()
        lengths = [len(f.result(5)) for f in futures]
        blocker.result(5)
    finally:
        batcher.stop()
    assert lengths == [2, 4, 2, 4]
    assert sorted(gen.batches[1:]) == [2, 2]


def test_expired_requests_are_dropped_not_computed():
    gen = GatedGenerator()
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=1)).start()
    try:
        gen.gate.clear()
        blocker = batcher.submit(req())
        assert gen.entered.wait(5)
        with pytest.raises(DeadlineError):
            batcher.generate(req(history=(7,)), deadline=time.monotonic() + 0.05)
        live = batcher.submit(req(history=(8,)))
        gen.gate.set()
        blocker.result(5)
        live.result(5)
    finally:
        batcher.stop()
    assert batcher.dropped == 1
    assert gen.batches == [1, 1]  # the late request never reached the generator


def test_one_failing_row_does_not_fail_its_batch_neighbours():
    gen = GatedGenerator(fail=True)  # fails on histories of length 3
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=50)).start()
    try:
        gen.gate.clear()
        blocker = batcher.submit(req())
        assert gen.entered.wait(5)
        bad = batcher.submit(req(history=(1, 2, 3)))
        good = batcher.submit(req(history=(4, 5)))
        gen.gate.set()
        blocker.result(5)
        assert len(good.result(5)) == 3
        with pytest.raises(RuntimeError, match="boom"):
            bad.result(5)
    finally:
        batcher.stop()


def test_generate_async_gets_its_own_rows_answer_or_error_in_a_shared_batch():
    gen = GatedGenerator(fail=True)  # fails on histories of length 3
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=8, max_wait_ms=50)).start()

    async def scenario():
        gen.gate.clear()
        blocker = batcher.submit(req())  # a thread's caller, batched with the loop's callers below
        await asyncio.get_running_loop().run_in_executor(None, gen.entered.wait, 5)
        bad = asyncio.ensure_future(batcher.generate_async(req(history=(1, 2, 3)), deadline=time.monotonic() + 5))
        good = asyncio.ensure_future(batcher.generate_async(req(history=(4, 5))))
        thread_caller = batcher.submit(req(history=(6,)))
        await asyncio.sleep(0.02)
        gen.gate.set()
        with pytest.raises(RuntimeError, match="boom"):
            await bad
        return await good, thread_caller.result(5), blocker.result(5)

    try:
        good, threaded, first = asyncio.run(scenario())
    finally:
        gen.gate.set()
        batcher.stop()
    assert [c.item for c in good] == [50, 49, 48] and len(threaded) == 3 and len(first) == 3
    assert gen.batches[:2] == [1, 3]  # the three queued callers shared one call (then the retry one by one)


def test_stop_finishes_queued_work_then_refuses():
    gen = GatedGenerator()
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=2, max_wait_ms=0)).start()
    futures = [batcher.submit(req(history=(i,))) for i in range(1, 6)]
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    stopper.join(10)
    assert all(len(f.result(0)) == 3 for f in futures)
    with pytest.raises(UnavailableError):
        batcher.submit(req())


def test_generate_async_awaits_the_worker_and_drops_late_or_abandoned_requests():
    gen = GatedGenerator()
    batcher = MicroBatcher(gen, BatcherConfig(max_batch_size=1, max_wait_ms=0)).start()

    async def scenario():
        gen.gate.clear()
        blocker = asyncio.ensure_future(batcher.generate_async(req()))  # occupies the generator
        await asyncio.get_running_loop().run_in_executor(None, gen.entered.wait, 5)
        with pytest.raises(DeadlineError):  # the deadline passes while it is queued
            await batcher.generate_async(req(history=(7,)), deadline=time.monotonic() + 0.05)
        abandoned = asyncio.ensure_future(batcher.generate_async(req(history=(8,))))
        await asyncio.sleep(0.05)
        abandoned.cancel()  # the call went away: the task's cancellation reaches the queued request
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        gen.gate.set()
        return await blocker, await batcher.generate_async(req(history=(9,)), deadline=time.monotonic() + 5)

    try:
        first, last = asyncio.run(scenario())
    finally:
        gen.gate.set()
        batcher.stop()
    assert [c.item for c in first] == [50, 49, 48] and len(last) == 3
    assert batcher.dropped == 2
    assert gen.batches == [1, 1]  # neither the late nor the abandoned request reached the generator


def test_config_is_checked():
    with pytest.raises(ConfigError, match="max_batch_size"):
        BatcherConfig(max_batch_size=0)
