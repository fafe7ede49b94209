"""Load benchmark of `cloud serve --replicas N` on loopback: 1 vs 2 replicas, and round_robin over two addresses.

Figures (one JSON line each; `--generator stub` = bench_server's 5 ms stand-in, `llm` = the trained LLM):
  replicas_load         per generator: the bare-grpcio yardstick, 1 replica, N replicas (one address, SO_REUSEPORT),
                        and two single-replica servers on two ports with the devices spread by gRPC's round_robin
                        (client-side health checking on), each: requests/s, p50/p99, codes, lost, server CPU
                        cores used; and the ratios N replicas / 1 replica and round_robin / 1 replica.
The devices (--devices, default 200) are grpc.aio coroutines in this process over --channels connections (the
kernel spreads connections, not calls, over the replicas of one address); they share the cores with the servers.
Rerun on a quiet machine: `.venv/bin/python -m benchmarks.run replicas` (or `-m benchmarks.bench_replicas --help`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_server import (DEFAULT_LLMS, REPO, STUB_ITEMS, SleepGenerator, drive, find_llm, make_requests,
                                     process_cpu_seconds)
from benchmarks.bench_server import ServerProcess as BareProcess
from benchmarks.common import emit

STUB_NAME = "bench-sleep"


def _register_stub() -> None:
    """The stand-in as a registered generator (`--generator bench-sleep:MS`), in this process and every replica."""
    from shared.generator import GENERATORS

    if STUB_NAME not in GENERATORS.names():
        GENERATORS.register(STUB_NAME)(lambda arg, dataset, seen=None, threads=0: SleepGenerator(float(arg or 5)))


# ---------------------------------------------------------------- server processes
def serve_set(argv: list[str]) -> int:
    """Child process: `lsc4rec cloud serve ARGV` with the stand-in registered (replicas run this module too)."""
    import cloud.replicas
    from simulator.cli import main

    _register_stub()
    cloud.replicas.REPLICA_ENTRY = "benchmarks.bench_replicas"
    return main(["cloud", "serve", *argv])


class ReplicaSetProcess:
    """`cloud serve --replicas N` (through serve_set) in its own process group; SIGTERM on exit."""

    def __init__(self, args: argparse.Namespace, replicas: int, llm: bool):
        self.tmp = tempfile.TemporaryDirectory()
        self.port_file = Path(self.tmp.name) / "port"
        wait_ms = args.llm_max_wait_ms if llm else args.max_wait_ms
        source = (["--llm", str(args.llm), "--data", str(args.data)] if llm else
                  ["--generator", f"{STUB_NAME}:{args.stub_ms:g}", "--data", str(args.data)])
        cmd = [sys.executable, "-m", "benchmarks.bench_replicas", "--serve-set", *source, "--address", "127.0.0.1:0",
               "--replicas", str(replicas), "--port-file", str(self.port_file), "--log-level", "WARNING",
               "--set", f"batch.max_batch_size={args.max_batch}", "--set", f"batch.max_wait_ms={wait_ms}",
               "--set", "grace_s=5.0"]
        if llm:
            cmd += ["--set", f"generator_threads={args.llm_threads}"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)

    def __enter__(self) -> "ReplicaSetProcess":
        deadline = time.monotonic() + 600
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica set did not start (exit code {self.proc.poll()})")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{int(self.port_file.read_text())}"
        return self

    def cpu_seconds(self) -> float:
        """The parent's and every replica's CPU time (the process group)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == self.proc.pid:
                        total += process_cpu_seconds(int(entry))
                except (OSError, IndexError):
                    pass
        return total

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.exit_code = self.proc.wait(10)
        self.tmp.cleanup()


class Servers:
    """Several server processes as one (their CPU summed), addressed as one comma-separated address."""

    def __init__(self, parts: list):
        self.parts = parts

    def __enter__(self) -> "Servers":
        for part in self.parts:
            part.__enter__()
        self.address = ",".join(part.address for part in self.parts)
        return self

    def cpu_seconds(self) -> float:
        return sum(part.cpu_seconds() for part in self.parts)

    def __exit__(self, *exc) -> None:
        for part in self.parts:
            part.__exit__(*exc)
        self.exit_code = max(abs(getattr(part, "exit_code", 0) or 0) for part in self.parts)


# ---------------------------------------------------------------- devices
async def _load(address: str, devices: int, channels: int, seconds: float, requests: list, timeout_s: float) -> dict:
    """bench_server's load loop over `channels` connections (each its own subchannel pool, so its own TCP
    connection); a comma-separated address gets the device client's channel options (round_robin, health check)."""
    import grpc

    from device.runtime.client import ClientConfig, channel_options, channel_target
    from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

    config = ClientConfig(address=address, timeout_s=timeout_s)
    target, _ = channel_target(address)
    options = channel_options(config) + [("grpc.use_local_subchannel_pool", 1)]
    pool = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [pb_grpc.CandidateServiceStub(channel) for channel in pool]
    try:
        return await drive(stubs, devices, seconds, requests, timeout_s)
    finally:
        for channel in pool:
            await channel.close()


def run_load(server, args: argparse.Namespace, requests: list, timeout_s: float) -> dict:
    asyncio.run(_load(server.address, args.devices, args.channels, min(2.0, args.seconds / 5), requests, timeout_s))
    cpu = server.cpu_seconds()
    result = asyncio.run(_load(server.address, args.devices, args.channels, args.seconds, requests, timeout_s))
    cpu = server.cpu_seconds() - cpu
    result["server_cpu_ms_per_request"] = 1000.0 * cpu / max(result["requests"], 1)
    result["server_cpu_cores"] = cpu / result["wall_s"]
    return result


def _short(result: dict) -> dict:
    keep = ("requests_per_s", "ok_per_s", "p50_ms", "p99_ms", "codes", "lost", "server_cpu_cores",
            "server_cpu_ms_per_request", "client_cpu_ms_per_request")
    return {key: result[key] for key in keep}


def figure(args: argparse.Namespace, llm: bool, requests: list, label: str, timeout_s: float) -> None:
    runs: dict[str, dict] = {}
    if not llm:  # the yardstick: bench_server's bare grpcio server, same devices, same run
        bare_args = argparse.Namespace(**vars(args))
        with BareProcess(bare_args, 1, llm=False, bare=True) as bare:
            runs["bare_grpc"] = _short(run_load(bare, args, requests, timeout_s))
    with ReplicaSetProcess(args, 1, llm) as one:
        runs["replicas_1"] = _short(run_load(one, args, requests, timeout_s))
    with ReplicaSetProcess(args, args.replicas, llm) as many:
        runs[f"replicas_{args.replicas}"] = _short(run_load(many, args, requests, timeout_s))
    with Servers([ReplicaSetProcess(args, 1, llm), ReplicaSetProcess(args, 1, llm)]) as pair:
        runs["round_robin_2_addresses"] = _short(run_load(pair, args, requests, timeout_s))
    base = runs["replicas_1"]["requests_per_s"] or 1e-9
    emit("replicas_load", seed=args.seed, generator=label, devices=args.devices, channels=args.channels,
         seconds=args.seconds, replicas=args.replicas, num_candidates=args.n, max_batch=args.max_batch,
         timeout_s=timeout_s, load_average=os.getloadavg(), runs=runs,
         ratio_replicas=runs[f"replicas_{args.replicas}"]["requests_per_s"] / base,
         ratio_round_robin=runs["round_robin_2_addresses"]["requests_per_s"] / base,
         ratio_1_replica_to_bare=(base / runs["bare_grpc"]["requests_per_s"]) if "bare_grpc" in runs else None,
         target="llm: ratio_replicas >= 1.6 and p99_ms <= 250 on 2 cores; lost == 0")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--replica"]:  # a replica of a set started by serve_set
        from cloud.cli import serve_main
        from cloud.replicas import replica_main

        _register_stub()
        return replica_main(serve_main)
    if argv[:1] == ["--serve-set"]:
        return serve_set(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration of each load run")
    parser.add_argument("--devices", type=int, default=200, help="concurrent simulated devices")
    parser.add_argument("--channels", type=int, default=20, help="connections the devices share (spread by the "
                                                                 "kernel over the replicas of one address)")
    parser.add_argument("--replicas", type=int, default=2, help="replicas compared with 1")
    parser.add_argument("--stub-ms", type=float, default=5.0, help="stand-in generator time per batch (ms)")
    parser.add_argument("--n", type=int, default=50, help="num_candidates per request")
    parser.add_argument("--max-batch", type=int, default=32, help="micro-batcher maximum batch size")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batcher maximum wait (ms), stand-in")
    parser.add_argument("--llm-max-wait-ms", type=float, default=10.0, help="micro-batcher maximum wait (ms), LLM")
    parser.add_argument("--llm-threads", type=int, default=1, help="torch threads of each LLM replica")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-call deadline against the stand-in")
    parser.add_argument("--llm-timeout-s", type=float, default=10.0, help="per-call deadline against the LLM")
    parser.add_argument("--llm", type=Path, default=None,
                        help="trained LLM run; default: the first of runs/llm-compact and runs/demo/llm found "
                             "(none: the LLM figure is skipped with a note)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "ml-100k", help="dataset the LLM was trained on")
    parser.add_argument("--only", choices=["stub", "llm"], default=None, help="run one part only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    args = parser.parse_args(argv)
    if args.only in (None, "stub"):
        rng = np.random.default_rng(args.seed)
        histories = [rng.choice(np.arange(1, STUB_ITEMS + 1), int(rng.integers(20, 51)), replace=False)
                     for _ in range(500)]
        figure(args, False, make_requests(histories, args.n, 2000, args.seed), f"stand-in {args.stub_ms:g} ms/batch",
               args.timeout_s)
    if args.only in (None, "llm"):
        trained = find_llm([args.llm] if args.llm is not None else DEFAULT_LLMS)
        if trained is None:
            print(json.dumps({"figure": "replicas_load", "skipped": "no trained LLM (run `make demo` first)"}))
            return 0
        from shared.data.dataset import load_dataset

        args.llm = trained
        histories = [seq[-50:] for seq in load_dataset(args.data).sequences() if len(seq) >= 5]
        figure(args, True, make_requests(histories, args.n, 2000, args.seed), f"llm {trained}", args.llm_timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
