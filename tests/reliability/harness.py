"""Fault-test harness: a slow stub generator, a cloud server in a child process, fd/thread counters.

`python -m tests.reliability.harness --port-file F [--address A] [--delay-ms D] [--record R] [--stats S]
[--token-file T] [--set key=value ...]` serves the real cloud.server (create_server) with a
popularity generator that sleeps `delay-ms` per batch and, with --record, appends every history it
is asked about to R (one JSON line per row), so a test can prove which events reached the cloud.
SIGTERM drains like `lsc4rec cloud serve`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
NUM_ITEMS = 200  # same catalogue as tests.reliability.models


class DelayGenerator:
    """Popularity answers after `delay_s` per batch; counts batches and rows; records histories if asked."""

    version = "delay-1"

    def __init__(self, num_items: int = NUM_ITEMS, delay_s: float = 0.0, record: Path | None = None):
        from shared.generator import PopularityGenerator

        self.inner = PopularityGenerator(np.arange(num_items + 1, dtype=np.float64))
        self.delay_s, self.record = delay_s, record
        self.batches = self.rows = 0
        self._lock = threading.Lock()

    @property
    def num_items(self) -> int:
        return self.inner.num_items

    def generate(self, histories, n, excludes=None):
        with self._lock:
            self.batches += 1
            self.rows += len(histories)
        if self.record is not None:
            with open(self.record, "a") as handle:
                for history in histories:
                    handle.write(json.dumps([int(i) for i in history]) + "\n")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.generate(histories, n, excludes)


def report(figure: str, **values) -> None:
    """One JSON line per fault figure (visible with `pytest -s`)."""
    print(json.dumps({"figure": figure, **values}, sort_keys=True, default=str))


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ChildServer:
    """The stub server (or `lsc4rec cloud serve`, `cli=True`) as a child process on 127.0.0.1."""

    def __init__(self, workdir: Path, address: str = "127.0.0.1:0", delay_ms: float = 0.0,
                 record: Path | None = None, token_file: Path | None = None, overrides: tuple[str, ...] = (),
                 cli_data: Path | None = None, models: Path | None = None, log_level: str = "INFO",
                 stats: Path | None = None):
        self.models, self.log_level, self.stats = models, log_level, stats
        self.workdir, self.address, self.delay_ms = Path(workdir), address, delay_ms
        self.record, self.token_file, self.overrides, self.cli_data = record, token_file, overrides, cli_data
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log = self.workdir / "server.log"

    def command(self, port_file: Path) -> list[str]:
        if self.cli_data is not None:
            cmd = [sys.executable, "-m", "simulator.cli", "cloud", "serve", "--popularity", str(self.cli_data)]
        else:
            cmd = [sys.executable, "-m", "tests.reliability.harness", "--delay-ms", str(self.delay_ms)]
            if self.record is not None:
                cmd += ["--record", str(self.record)]
            if self.stats is not None:
                cmd += ["--stats", str(self.stats)]
        cmd += ["--address", self.address, "--port-file", str(port_file), "--log-level", self.log_level]
        if self.models is not None:
            cmd += ["--models", str(self.models)]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def start(self, timeout_s: float = 60.0) -> "ChildServer":
        """Start and wait for the port file (written once SERVING); the address keeps the bound port."""
        self.starts += 1
        port_file = self.workdir / f"port-{self.starts}"
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.command(port_file), cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not start (rc {self.proc.returncode}): {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.address = f"127.0.0.1:{int(port_file.read_text())}"
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from shared.config import load_config

    from cloud.server import ServerConfig, create_server

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(ServerConfig, None, args.overrides)
    token = args.token_file.read_text().strip() if args.token_file else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    generator = DelayGenerator(delay_s=args.delay_ms / 1000.0, record=args.record)
    server, port = create_server(config, generator, args.models, address=args.address, token=token)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(args.port_file)
    try:
        while not stop.wait(0.05):
            pass
    finally:
        server.stop()
        if args.stats is not None:  # every attempt that reached the server, retries included
            import grpc

            counts = {code.name: server.metrics.count("GetCandidates", code.name) for code in grpc.StatusCode}
            args.stats.write_text(json.dumps({code: int(n) for code, n in counts.items() if n}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="stub cloud server for the reliability tests")
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port to bind (loopback)")
    parser.add_argument("--port-file", type=Path, required=True, help="written with the bound port once serving")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="sleep per generator batch")
    parser.add_argument("--record", type=Path, default=None, help="append every history to this JSONL file")
    parser.add_argument("--stats", type=Path, default=None,
                        help="on exit, write the GetCandidates attempts the server saw per status code (JSON)")
    parser.add_argument("--models", type=Path, default=None, help="folder of published device artifacts")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file")
    parser.add_argument("--log-level", default="INFO", help="server logging level")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="ServerConfig override")
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
