"""Load benchmark of the cloud server on loopback: simulated devices against a 5 ms stand-in and the real LLM.

Figures (one JSON line each):
  server_load       N concurrent devices for --seconds: requests/s, p50/p99, counts per status, lost, and the
                    server's and the load client's CPU ms per request (steadier than requests/s on a shared
                    machine; the client shares the same cores)
  server_batching   the real generator at --batch-clients concurrent clients, batch size 1 vs --max-batch
The server runs in its own process (as in production); the devices are grpc.aio coroutines in this one.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import emit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LLMS = [REPO / "runs" / "llm-compact", REPO / "runs" / "demo" / "llm"]  # trained LLMs, first found wins
STUB_ITEMS = 1682  # ML-100K's catalogue size, so messages have the real shape


class SleepGenerator:
    """The stand-in: the most popular unblocked items after a fixed `ms` per generate call (i.e. per batch).

    Its own work is kept tiny (early exit over a fixed order) so the figure measures the gRPC layer.
    """

    def __init__(self, ms: float, num_items: int = STUB_ITEMS):
        self.ms = ms
        self.version = f"sleep-{ms:g}ms"
        self.num_items = num_items
        from shared.records import Candidate

        self._order = [Candidate(i, float(i)) for i in range(num_items, 0, -1)]  # built once, immutable

    def generate(self, histories, n, excludes=None):
        time.sleep(self.ms / 1000.0)
        out = []
        for row, history in enumerate(histories):
            blocked = set(history) | set(excludes[row] if excludes else ())
            picked = []
            for candidate in self._order:
                if candidate.item not in blocked:
                    picked.append(candidate)
                    if len(picked) == n:
                        break
            out.append(picked)
        return out


# ---------------------------------------------------------------- server process
def serve_bare(args: argparse.Namespace) -> int:
    """Child process: the yardstick, a bare grpcio server answering a fixed 50-candidate list at once."""
    import threading
    from concurrent import futures

    import grpc

    from shared.rpc import lsc4rec_pb2 as pb
    from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

    reply = pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=i, score=1.0) for i in range(1, args.n + 1)])

    class Bare(pb_grpc.CandidateServiceServicer):
        def GetCandidates(self, request, context):
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    pb_grpc.add_CandidateServiceServicer_to_server(Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Path(args.port_file).write_text(json.dumps({"port": port, "metrics_port": None}))
    while not stop.wait(0.2):
        pass
    server.stop(5.0).wait()
    return 0


def serve(args: argparse.Namespace) -> int:
    """Child process: start the server, write {port, metrics_port} to --port-file, serve until SIGTERM."""
    import threading

    if args.serve == "bare":
        return serve_bare(args)
    from shared.config import load_config

    from cloud.server import ServerConfig, create_server

    config = load_config(ServerConfig, None, [f"batch.max_batch_size={args.max_batch}",
                                              f"batch.max_wait_ms={args.max_wait_ms}", "grace_s=5.0"])
    if args.serve == "llm":
        from cloud.llm import load_generator
        from shared.data.dataset import load_dataset

        generator = load_generator(args.llm, load_dataset(args.data), threads=args.llm_threads)
    else:
        generator = SleepGenerator(args.stub_ms)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server, port = create_server(config, generator, None, address="127.0.0.1:0", metrics_port=0)
    Path(args.port_file).write_text(json.dumps({"port": port, "metrics_port": server.metrics_port}))
    while not stop.wait(0.2):
        pass
    server.stop(5.0)
    return 0


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process used so far (Linux /proc): per request, a figure that
    machine load perturbs far less than requests/s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """Start `serve` in a subprocess; wait for its port; SIGTERM it on exit."""

    def __init__(self, args: argparse.Namespace, max_batch: int, llm: bool, bare: bool = False):
        wait_ms = args.llm_max_wait_ms if llm else args.max_wait_ms
        self.tmp = tempfile.TemporaryDirectory()
        self.port_file = Path(self.tmp.name) / "port.json"
        cmd = [sys.executable, "-m", "benchmarks.bench_server", "--serve", "bare" if bare else "llm" if llm else "stub", "--port-file", str(self.port_file),
               "--max-batch", str(max_batch), "--max-wait-ms", str(wait_ms), "--stub-ms", str(args.stub_ms)]
        if llm:
            cmd += ["--llm", str(args.llm), "--data", str(args.data), "--llm-threads", str(args.llm_threads)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL)

    def __enter__(self) -> "ServerProcess":
        deadline = time.monotonic() + 300
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"benchmark server did not start (exit code {self.proc.poll()})")
            time.sleep(0.1)
        info = json.loads(self.port_file.read_text())
        self.address, self.metrics_port = f"127.0.0.1:{info['port']}", info["metrics_port"]
        return self

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def mean_batch(self) -> float:
        if self.metrics_port is None:
            return 1.0
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith("lsc4rec_batch_size_")}
        count = values.get("lsc4rec_batch_size_count", 0.0)
        return values.get("lsc4rec_batch_size_sum", 0.0) / count if count else 0.0

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait(10)
        self.tmp.cleanup()


# ---------------------------------------------------------------- devices
def make_requests(histories: list[np.ndarray], n: int, count: int, seed: int) -> list:
    from shared.rpc import lsc4rec_pb2 as pb

    rng = random.Random(seed)
    out = []
    for k in range(count):
        history = histories[rng.randrange(len(histories))]
        out.append(pb.GetCandidatesRequest(user_id=f"device-{k}", history=[int(i) for i in history],
                                           num_candidates=n, request_id=f"bench-{k}"))
    return out


async def drive(stubs: list, devices: int, seconds: float, requests: list, timeout_s: float,
                max_requests: int = 10**7) -> dict:
    """`devices` simulated devices calling GetCandidates back to back for `seconds` (device k on stubs[k % len]):
    requests/s, latency percentiles, status codes, calls lost (never ended, or ended after their deadline)."""
    import grpc

    loop = asyncio.get_running_loop()
    state = {"started": 0, "finished": 0, "late": 0}
    codes: Counter = Counter()
    latencies: list[float] = []
    stop_at = loop.time() + seconds

    async def device(k: int) -> None:
        stub, i = stubs[k % len(stubs)], k
        while loop.time() < stop_at and state["started"] < max_requests:
            state["started"] += 1
            start = time.perf_counter()
            try:
                await stub.GetCandidates(requests[i % len(requests)], timeout=timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            elapsed = time.perf_counter() - start
            state["finished"] += 1
            codes[code] += 1
            latencies.append(elapsed)
            state["late"] += elapsed > timeout_s + 0.5  # ended, but not before its deadline
            i += devices

    began, cpu = time.perf_counter(), time.process_time()
    tasks = [asyncio.ensure_future(device(k)) for k in range(devices)]
    await asyncio.wait(tasks, timeout=seconds + timeout_s + 10)
    for task in tasks:
        task.cancel()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    lat = np.asarray(latencies) * 1000.0
    return {"requests": state["finished"], "requests_per_s": state["finished"] / wall,
            "ok_per_s": codes["OK"] / wall, "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None, "codes": dict(codes),
            "lost": state["started"] - state["finished"] + state["late"], "wall_s": wall,
            "client_cpu_ms_per_request": 1000.0 * cpu / max(state["finished"], 1)}  # shares the cores with the server


async def _load(address: str, devices: int, seconds: float, requests: list, timeout_s: float,
                max_requests: int) -> dict:
    import grpc

    from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        return await drive([pb_grpc.CandidateServiceStub(channel)], devices, seconds, requests, timeout_s, max_requests)


def run_load(server: ServerProcess, devices: int, seconds: float, requests: list, timeout_s: float) -> dict:
    warmup = min(2.0, seconds / 5)
    asyncio.run(_load(server.address, devices, warmup, requests, timeout_s, 10**6))
    cpu = server.cpu_seconds()
    result = asyncio.run(_load(server.address, devices, seconds, requests, timeout_s, 10**7))
    cpu = server.cpu_seconds() - cpu
    result["server_cpu_ms_per_request"] = 1000.0 * cpu / max(result["requests"], 1)
    result["server_cpu_cores"] = cpu / result["wall_s"]  # ~1 = the server is bound by its one GIL
    return result


# ---------------------------------------------------------------- figures
def stub_figure(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    histories = [rng.choice(np.arange(1, STUB_ITEMS + 1), int(rng.integers(20, 51)), replace=False)
                 for _ in range(500)]
    requests = make_requests(histories, args.n, 2000, args.seed)
    with ServerProcess(args, args.max_batch, llm=False) as server:
        result = run_load(server, args.devices, args.seconds, requests, args.timeout_s)
        result["mean_batch"] = server.mean_batch()
    with ServerProcess(args, 1, llm=False, bare=True) as bare:
        yardstick = run_load(bare, args.devices, args.seconds, requests, args.timeout_s)
    emit("server_load", seed=args.seed, generator=f"stand-in {args.stub_ms:g} ms/batch", devices=args.devices,
         seconds=args.seconds, num_candidates=args.n, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
         timeout_s=args.timeout_s, server_exit_code=server.exit_code,
         bare_grpc_requests_per_s=yardstick["requests_per_s"], bare_grpc_p99_ms=yardstick["p99_ms"],
         bare_grpc_server_cpu_ms_per_request=yardstick["server_cpu_ms_per_request"],
         ratio_to_bare=result["requests_per_s"] / max(yardstick["requests_per_s"], 1e-9),
         target="requests_per_s >= 1500, p99_ms <= 150, lost == 0", **result)


def find_llm(folders: list[Path]) -> Path | None:
    """The first trained LLM run in `folders`, each a run (holding config.json) or a folder of runs."""
    for folder in folders:
        runs = sorted(folder.glob("config.json")) + sorted(folder.glob("*/config.json"))
        if runs:
            return runs[0].parent
    return None


def untrained_compact(dataset, out: Path) -> Path:
    """The compact preset's architecture with untrained weights: same cost per call as the trained one."""
    from cloud.llm.model import build_model
    from cloud.llm.semantic_ids import build_index
    from cloud.llm.store import save_run
    from cloud.llm.train import load_llm_config

    config = load_llm_config("compact", REPO / "cloud" / "llm" / "presets" / "compact.toml")
    index = build_index(dataset.items, config.tokenizer)
    save_run(out, build_model(config.model, index.vocab_size, index.depth, 0), index, config, {})
    return out


def batching_runs(args: argparse.Namespace, requests: list) -> tuple[dict, dict]:
    """Batch size 1 and max_batch, interleaved A B A B (half the time each) so machine noise hits both."""
    parts: dict[int, list[dict]] = {1: [], args.max_batch: []}
    for _ in range(2):
        for batch in parts:
            with ServerProcess(args, batch, llm=True) as server:
                parts[batch].append(run_load(server, args.batch_clients, args.seconds / 2, requests,
                                             args.llm_timeout_s))
                parts[batch][-1]["mean_batch"] = server.mean_batch()
    merged = []
    for runs in parts.values():
        codes: Counter = Counter()
        for run in runs:
            codes.update(run["codes"])
        merged.append({"ok_per_s": codes["OK"] / sum(r["wall_s"] for r in runs), "codes": dict(codes),
                       "p99_ms": max(r["p99_ms"] or 0.0 for r in runs), "lost": sum(r["lost"] for r in runs),
                       "mean_batch": float(np.mean([r["mean_batch"] for r in runs]))})
    return merged[0], merged[1]


def llm_figures(args: argparse.Namespace) -> None:
    from shared.data.dataset import load_dataset

    dataset = load_dataset(args.data)
    trained = find_llm([args.llm] if args.llm is not None else DEFAULT_LLMS)
    if trained is not None:
        args.llm, label = trained, f"llm {trained}"
    else:
        scratch = tempfile.TemporaryDirectory()
        args.llm = untrained_compact(dataset, Path(scratch.name) / "llm")
        label = "llm compact preset, UNTRAINED weights (no trained LLM found; run `make demo` first)"
    histories = [seq[-50:] for seq in dataset.sequences() if len(seq) >= 5]
    requests = make_requests(histories, args.n, 2000, args.seed)
    with ServerProcess(args, args.max_batch, llm=True) as server:
        result = run_load(server, args.devices, args.seconds, requests, args.llm_timeout_s)
        result["mean_batch"] = server.mean_batch()
    emit("server_load", seed=args.seed, generator=label, devices=args.devices, seconds=args.seconds,
         num_candidates=args.n, max_batch=args.max_batch, max_wait_ms=args.llm_max_wait_ms,
         torch_threads=args.llm_threads, timeout_s=args.llm_timeout_s, server_exit_code=server.exit_code,
         target="lost == 0", **result)
    single, batched = batching_runs(args, requests)
    emit("server_batching", seed=args.seed, generator=label, clients=args.batch_clients,
         seconds=args.seconds, num_candidates=args.n, max_wait_ms=args.llm_max_wait_ms,
         torch_threads=args.llm_threads, ok_per_s_batch1=single["ok_per_s"], ok_per_s_batched=batched["ok_per_s"],
         speedup=batched["ok_per_s"] / max(single["ok_per_s"], 1e-9), max_batch=args.max_batch,
         p99_ms_batch1=single["p99_ms"], p99_ms_batched=batched["p99_ms"],
         mean_batch_batched=batched["mean_batch"], codes_batch1=single["codes"], codes_batched=batched["codes"],
         lost=single["lost"] + batched["lost"], target="speedup >= 3, lost == 0")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration of each load run")
    parser.add_argument("--devices", type=int, default=200, help="concurrent simulated devices (server_load)")
    parser.add_argument("--batch-clients", type=int, default=32, help="concurrent clients for server_batching")
    parser.add_argument("--stub-ms", type=float, default=5.0, help="stand-in generator time per batch (ms)")
    parser.add_argument("--n", type=int, default=50, help="num_candidates per request")
    parser.add_argument("--max-batch", type=int, default=32, help="micro-batcher maximum batch size")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batcher maximum wait (ms)")
    parser.add_argument("--llm-max-wait-ms", type=float, default=10.0,
                        help="micro-batcher maximum wait (ms) in front of the LLM (cloud/presets/llm.toml)")
    parser.add_argument("--llm-threads", type=int, default=1,
                        help="torch threads of the LLM server (1: on 2 shared cores more threads thrash)")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-call deadline against the stand-in")
    parser.add_argument("--llm-timeout-s", type=float, default=10.0, help="per-call deadline against the LLM")
    parser.add_argument("--llm", type=Path, default=None,
                        help="trained LLM run (or folder of runs); default: the first of runs/llm-compact and "
                             "runs/demo/llm (what `make demo` trains) that exists, else the compact preset with "
                             "untrained weights (flagged in the figure's `generator`)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "ml-100k", help="dataset the LLM was trained on")
    parser.add_argument("--only", choices=["stub", "llm"], default=None, help="run one part only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--serve", choices=["stub", "llm", "bare"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.serve:
        return serve(args)
    if args.only in (None, "stub"):
        stub_figure(args)
    if args.only in (None, "llm"):
        llm_figures(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
