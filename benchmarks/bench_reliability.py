"""Reliability figures: overload at 4x the in-flight limit, 10,000 model mutants, and a soak of 100 devices.

`python -m benchmarks.bench_reliability [--seconds 30] [--mutants 10000] [--soak-seconds 600]
[--only overload|mutants|soak]` prints one JSON line per figure (benchmarks.common.emit). The
server runs in its own process on 127.0.0.1 so the load generator does not share its GIL; every
loop is bounded by a count or a time and stops by itself.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit, percentiles_us


def _ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    p = percentiles_us(samples)
    return {"n": p["n"], "p50_ms": p["p50_us"] / 1e3, "p99_ms": p["p99_us"] / 1e3, "max_ms": max(samples) * 1e3}


# --- overload ----------------------------------------------------------------------------------

def _load_worker(client, stop: threading.Event, rng: random.Random, out: list, budget_s: float,
                 pause_s: tuple[float, float] = (0.005, 0.02)) -> None:
    from shared.errors import LSC4RecError
    from shared.records import CandidateRequest

    while not stop.is_set():
        history = tuple(rng.sample(range(1, 201), 10))
        start = time.perf_counter()
        try:
            client.get_candidates(CandidateRequest(f"u{rng.randrange(1000)}", history, 20), timeout_s=budget_s)
            code = "OK"
        except LSC4RecError as exc:
            code = getattr(exc, "code", type(exc).__name__)
        out.append((code, time.perf_counter() - start))
        if code == "RESOURCE_EXHAUSTED":
            time.sleep(rng.uniform(*pause_s))  # a shed device waits a little before its next call


def _load_process(address: str, threads: int, seconds: float, budget_s: float, seed: int,
                  pause_s: tuple[float, float] = (0.005, 0.02)):
    """One load-generating process: `threads` closed-loop clients for `seconds`; returns (rows, calls)."""
    from device.runtime.client import ClientConfig, CloudClient
    from tests.reliability.harness import NUM_ITEMS

    config = ClientConfig(address=address, timeout_s=budget_s, max_attempts=3)
    clients = [CloudClient(config, NUM_ITEMS) for _ in range(threads)]
    stop, results = threading.Event(), [[] for _ in clients]
    workers = [threading.Thread(target=_load_worker, args=(c, stop, random.Random(seed * 1000 + n), results[n],
                                                           budget_s, pause_s), daemon=True) for n, c in enumerate(clients)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(budget_s * 5)
    out = ([r for per in results for r in per], sum(c.stats.calls for c in clients))
    for c in clients:
        c.close()
    return out


def _probe(client, stop: threading.Event, out: list, budget_s: float) -> None:
    from shared.errors import LSC4RecError
    from shared.records import CandidateRequest

    for n in range(100_000):
        if stop.is_set():
            return
        start = time.perf_counter()
        try:
            client.get_candidates(CandidateRequest(f"probe{n}", (4, 5, 6), 20), timeout_s=budget_s)
            code = "OK"
        except LSC4RecError as exc:
            code = getattr(exc, "code", type(exc).__name__)
        out.append((code, time.perf_counter() - start))
        time.sleep(0.01)


def overload(seconds: float, limit: int = 16, factor: int = 4, delay_ms: float = 20.0, budget_s: float = 1.0,
             processes: int = 4, server_log_level: str = "INFO", shed_pause_ms: float = 5.0) -> None:
    """`factor * limit` closed-loop clients (spread over `processes` processes, so the load generator's own
    GIL does not dominate the latencies) against max_in_flight = limit, for `seconds`."""
    import multiprocessing

    from benchmarks.bench_server import process_cpu_seconds
    from device.runtime.client import ClientConfig, CloudClient
    from shared.errors import LSC4RecError
    from shared.records import CandidateRequest
    from tests.reliability.harness import NUM_ITEMS, ChildServer

    with tempfile.TemporaryDirectory() as work:
        stats = Path(work) / "server-stats.json"  # the attempts the server saw: gRPC retries happen inside the client
        server = ChildServer(Path(work), delay_ms=delay_ms, stats=stats, overrides=(
            f"max_in_flight={limit}", "batch.max_batch_size=8", "grace_s=1.0"), log_level=server_log_level).start()
        try:
            clients = factor * limit
            shares = [clients // processes + (p < clients % processes) for p in range(processes)]
            probe, stop_probe = [], threading.Event()  # one unloaded caller: latency without client-side GIL waits
            with CloudClient(ClientConfig(address=server.address, timeout_s=budget_s, max_attempts=1),
                             NUM_ITEMS) as probe_client:
                prober = threading.Thread(target=_probe, args=(probe_client, stop_probe, probe, budget_s), daemon=True)
                start, cpu = time.monotonic(), process_cpu_seconds(server.pid)
                with multiprocessing.get_context("spawn").Pool(processes) as pool:
                    pause = (shed_pause_ms / 1000.0, 4 * shed_pause_ms / 1000.0)
                    result = pool.starmap_async(_load_process, [(server.address, n, seconds, budget_s, p, pause)
                                                                for p, n in enumerate(shares)])
                    time.sleep(min(5.0, seconds / 4))  # the workers are up and loading
                    prober.start()
                    parts = result.get(seconds * 10 + 120)
                stop_probe.set()
                prober.join(budget_s * 5)
            held, cpu = time.monotonic() - start, process_cpu_seconds(server.pid) - cpu
            rows = [r for part in parts for r in part[0]]
            calls = sum(p[1] for p in parts)
            after = collections.Counter()
            with CloudClient(ClientConfig(address=server.address, timeout_s=budget_s), NUM_ITEMS) as client:
                for n in range(100):  # the next 100 calls after the load stops
                    try:
                        client.get_candidates(CandidateRequest(f"after{n}", (1, 2, 3), 20))
                        after["OK"] += 1
                    except LSC4RecError as exc:
                        after[getattr(exc, "code", type(exc).__name__)] += 1
        finally:
            server.signal(15)
            server.wait(15)
        # retries = attempts that reached the server beyond one per call (load, probe and the next 100 calls)
        attempts = sum(json.loads(stats.read_text()).values())
        calls_all = calls + len(probe) + sum(after.values())
    codes = collections.Counter(code for code, _ in rows)
    ok = [s for code, s in rows if code == "OK"]
    shed = [s for code, s in rows if code == "RESOURCE_EXHAUSTED"]
    emit("reliability.overload", shed_pause_ms=[shed_pause_ms, 4 * shed_pause_ms], server_log_level=server_log_level, clients=clients, processes=processes, max_in_flight=limit, seconds=seconds,
         wall_s=round(held, 1), generator_delay_ms=delay_ms, budget_ms=budget_s * 1000,
         requests_per_s=round(len(rows) / seconds, 1), codes=dict(codes),
         server_cpu_ms_per_call=round(1000.0 * cpu / max(len(rows) + len(probe), 1), 3), shed_latency=_ms(shed),
         accepted_latency=_ms(ok), probe_codes=dict(collections.Counter(c for c, _ in probe)),
         probe_shed_latency=_ms([t for c, t in probe if c == "RESOURCE_EXHAUSTED"]),
         probe_accepted_latency=_ms([t for c, t in probe if c == "OK"]), accepted_within_budget=sum(s <= budget_s for s in ok), retries=attempts - calls_all,
         calls=calls, retry_ratio=round((attempts - calls_all) / max(calls_all, 1), 4), next_100=dict(after),
         pass_shed_p99_le_50ms=bool(shed) and _ms(shed)["p99_ms"] <= 50.0,
         pass_retries_le_10pct=(attempts - calls_all) <= 0.1 * calls_all, pass_next_100=after == {"OK": 100})


# --- mutants -----------------------------------------------------------------------------------

def mutants(count: int, chunk: int = 1000) -> None:
    from tests.reliability import models
    from tests.reliability.mutants import run_child, summarize, write_cases

    totals, crashes, start = collections.Counter(), 0, time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        good = models.write_good(work / "good")
        data = (good / "model.onnx").read_bytes()
        from tqdm import tqdm

        for n, first in enumerate(tqdm(range(0, count, chunk), desc="mutant chunks", unit="chunk", file=sys.stderr)):
            spec = write_cases(data, min(chunk, count - first), seed=1000 + n, folder=work / f"cases{n}")
            child = run_child(good, spec, work / f"holder{n}", timeout_s=1800)
            crashes += child.crashed
            totals.update(summarize(child.rows))
    emit("reliability.mutants", mutants=count, resigned=True, seconds=round(time.monotonic() - start, 1),
         child_crashes=crashes, **dict(totals))


# --- soak --------------------------------------------------------------------------------------

_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "INTERNAL", "UNAUTHENTICATED")


def _device_loop(sessions, new_session, stop: threading.Event, rng: random.Random,
                 counts: collections.Counter) -> None:
    from shared.errors import LSC4RecError

    while not stop.is_set():
        slot = rng.randrange(len(sessions))
        session = sessions[slot]
        unseen = [i for i in range(1, 201) if i not in session.history]
        if len(unseen) < 80:  # the user has seen most of the catalogue: a new user on this device
            sessions[slot] = new_session(session.config.user_id)
            counts["new_users"] += 1
            continue
        try:
            result = session.on_event(rng.choice(unseen))
        except LSC4RecError as exc:
            counts[type(exc).__name__] += 1
            continue
        counts["events"] += 1
        counts["requests"] += result.requested
        counts["ok"] += bool(result.request_ok)
        if result.requested and not result.request_ok:
            code = next((c for c in _CODES if c in result.note), result.note.split(":")[0])
            counts[f"failed:{code}"] += 1
        counts["empty_slates"] += not result.slate.items
        time.sleep(0.005)


def soak(seconds: float, devices: int = 100, workers: int = 8, sample_s: float = 5.0) -> None:
    from device.runtime.client import ClientConfig, CloudClient
    from device.runtime.policies.every_n import EveryN
    from device.runtime.artifact import load_reranker
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset
    from tests.reliability import models
    from tests.reliability.harness import NUM_ITEMS, ChildServer, fd_count, rss_bytes, thread_count

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = write_dataset(synthetic_dataset(num_users=50, num_items=NUM_ITEMS), work / "data")
        reranker = load_reranker(models.write_good(work / "model"), vocab_hash=models.VOCAB_HASH)
        server = ChildServer(work, cli_data=data, overrides=("grace_s=1.0",)).start()
        try:
            clients = [CloudClient(ClientConfig(address=server.address, timeout_s=2.0), NUM_ITEMS)
                       for _ in range(devices)]
            now_ms = lambda: time.monotonic() * 1000.0  # noqa: E731

            def new_session(user_id: str) -> DeviceSession:
                config = SessionConfig(user_id=user_id, slate_size=10, num_candidates=50, backoff_initial_ms=200,
                                       backoff_max_ms=2000)
                return DeviceSession(config, reranker, EveryN(3), now_ms, source=clients[int(user_id[3:])])

            sessions = [new_session(f"dev{d}") for d in range(devices)]
            stop, per_thread = threading.Event(), [collections.Counter() for _ in range(workers)]
            groups = [sessions[w::workers] for w in range(workers)]
            threads = [threading.Thread(target=_device_loop, args=(g, new_session, stop, random.Random(w),
                                                                   per_thread[w]), daemon=True)
                       for w, g in enumerate(groups)]
            start = time.monotonic()
            for t in threads:
                t.start()
            from tqdm import tqdm

            samples, bar = [], tqdm(total=int(seconds), desc="soak", unit="s", file=sys.stderr)
            while time.monotonic() - start < seconds:
                bar.n = int(time.monotonic() - start)
                bar.refresh()
                time.sleep(min(sample_s, max(0.0, seconds - (time.monotonic() - start))))
                samples.append((time.monotonic() - start, rss_bytes(server.pid), fd_count(server.pid),
                                thread_count(server.pid), rss_bytes(), fd_count(), thread_count()))
            bar.close()
            stop.set()
            for t in threads:
                t.join(10)
            for c in clients:
                c.close()
        finally:
            server.signal(15)
            server.wait(15)
    counts = sum(per_thread, collections.Counter())  # one Counter per thread: no lost updates
    warm = next((s for s in samples if s[0] >= min(60.0, seconds * 0.2)), samples[0])
    last = samples[-1]
    growth = (last[1] - warm[1]) / warm[1]
    emit("reliability.soak", devices=devices, seconds=round(last[0], 1), warmup_s=round(warm[0], 1),
         events=counts["events"], requests=counts["requests"], requests_ok=counts["ok"],
         requests_per_s=round(counts["requests"] / last[0], 1), empty_slates=counts["empty_slates"],
         new_users=counts["new_users"],
         errors={k: v for k, v in counts.items() if k not in ("events", "requests", "ok", "empty_slates", "new_users")},
         server_rss_mb=[round(warm[1] / 2**20, 1), round(last[1] / 2**20, 1)], server_rss_growth=round(growth, 4),
         server_fds=[warm[2], last[2]], server_threads=[warm[3], last[3]],
         client_rss_mb=[round(warm[4] / 2**20, 1), round(last[4] / 2**20, 1)], client_fds=[warm[5], last[5]],
         client_threads=[warm[6], last[6]], pass_rss_growth_lt_10pct=growth < 0.10,
         pass_fds_flat=last[2] <= warm[2] + 2, pass_threads_flat=last[3] <= warm[3] + 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the overload is held")
    parser.add_argument("--limit", type=int, default=16, help="server max_in_flight under overload (clients = 4x)")
    parser.add_argument("--server-log-level", default="INFO",
                        help="server logging level under overload (INFO logs every shed call)")
    parser.add_argument("--shed-pause-ms", type=float, default=5.0,
                        help="a shed client waits uniform(x, 4x) ms before its next call")
    parser.add_argument("--mutants", type=int, default=10_000, help="byte-flip/truncation mutants to load")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak length with 100 devices")
    parser.add_argument("--devices", type=int, default=100, help="simulated devices in the soak")
    parser.add_argument("--only", choices=("overload", "mutants", "soak"), action="append",
                        help="run only these parts (repeatable; default all)")
    args = parser.parse_args(argv)
    parts = args.only or ["overload", "mutants", "soak"]
    np.random.seed(0)
    if "overload" in parts:
        overload(args.seconds, limit=args.limit, server_log_level=args.server_log_level,
                 shed_pause_ms=args.shed_pause_ms)
    if "mutants" in parts:
        mutants(args.mutants)
    if "soak" in parts:
        soak(args.soak_seconds, devices=args.devices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
