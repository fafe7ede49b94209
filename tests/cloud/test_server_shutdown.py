"""Graceful shutdown: NOT_SERVING, new calls refused, in-flight calls finish; SIGTERM exits 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from shared.data.dataset import write_dataset
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from tests.cloud.test_server import CODE, GatedGenerator, call_code, health_status, request, start
from tests.conftest import REPO, synthetic_dataset


def test_drain_finishes_in_flight_refuses_new_and_reports_not_serving():
    gen = GatedGenerator()
    server, port = start(gen)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.CandidateServiceStub(channel)
    gen.gate.clear()
    gen.entered.clear()
    held = stub.GetCandidates.future(request(), timeout=20)
    assert gen.entered.wait(5)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 10.0})
    stopper.start()
    deadline = time.monotonic() + 5
    while not server.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
    time.sleep(0.2)  # let grpc stop accepting
    assert call_code(stub.GetCandidates, request(), timeout=2) == CODE.UNAVAILABLE
    gen.gate.set()
    assert len(held.result().candidates) == 5  # the in-flight call still completes
    stopper.join(15)
    assert not stopper.is_alive()


def test_sigterm_drains_and_exits_zero(tmp_path):
    data = write_dataset(synthetic_dataset(num_users=10, num_items=30), tmp_path / "data")
    port_file = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "cloud", "serve", "--popularity", str(data),
         "--address", "127.0.0.1:0", "--port-file", str(port_file), "--set", "grace_s=5.0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "no port file"
        port = int(port_file.read_text())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        reply = pb_grpc.CandidateServiceStub(channel).GetCandidates(request(n=3), timeout=5)
        assert len(reply.candidates) == 3
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, output
    assert f"listening on 127.0.0.1:{port}" in output and "draining" in output and "stopped" in output


@pytest.mark.parametrize("bad", [["--set", "max_in_flight=0"], ["--set", "nonsense=1"]])
def test_bad_config_is_refused_with_key(tmp_path, bad):
    data = write_dataset(synthetic_dataset(num_users=5, num_items=20), tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "cloud", "serve", "--popularity", str(data),
         "--address", "127.0.0.1:0", *bad], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert bad[1].split("=")[0] in result.stderr
