"""Starts `lsc4rec cloud serve` as a real subprocess on loopback and waits until it reports SERVING."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from shared.errors import UnavailableError
from shared.generator import GENERATORS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m simulator.cli cloud serve ...` with its log in a file; stop() sends SIGTERM (graceful)."""

    def __init__(self, llm: str, models: str = "", dataset_dir: str = "", log: Path | None = None,
                 extra: list[str] | None = None, start_timeout_s: float = 180.0):
        self.llm, self.models, self.dataset_dir = llm, models, dataset_dir
        self.extra, self.timeout = extra or [], start_timeout_s
        self.log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"lsc4rec-serve-{os.getpid()}.log"
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "simulator.cli", "cloud", "serve", "--address", self.address]
        if self.llm:  # a generator spec ("llm:DIR", a registered NAME[:ARG]) or a bare LLM folder
            flag = "--generator" if self.llm.partition(":")[0] in GENERATORS else "--llm"
            cmd += [flag, self.llm, "--data", self.dataset_dir]
        else:  # the server's own popularity stand-in (counts over the whole dataset file)
            cmd += ["--popularity", self.dataset_dir]
        if self.models:
            cmd += ["--models", self.models]
        return cmd + self.extra

    def start(self) -> "ServerProcess":
        self.address = f"127.0.0.1:{free_port()}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._fh = self.log.open("w")
        self.proc = subprocess.Popen(self.command(), stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                     cwd=Path(__file__).resolve().parent.parent)
        self._wait_serving()
        return self

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise UnavailableError(f"cloud server exited with {self.proc.returncode}; log: {self.log}: "
                                           f"{self.log.read_text()[-800:]}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        self.stop()
        raise UnavailableError(f"cloud server at {self.address} not SERVING after {self.timeout:.0f} s; log: {self.log}")

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()
