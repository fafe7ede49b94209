"""`cloud serve --replicas N` (cloud.replicas) and the device client's round_robin over several servers.

Replica sets run as real process trees on 127.0.0.1, each in its own session so the cleanup can end the whole
group; every wait is bounded.
"""
from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.replicas import MAX_REPLICAS, parse_replicas
from cloud.server import ServerConfig, create_server
from device.runtime.client import ClientConfig, CloudClient, channel_target
from shared.data.dataset import write_dataset
from shared.errors import ConfigError, LSC4RecError
from shared.generator import PopularityGenerator
from shared.records import CandidateRequest
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from simulator.cli import main
from tests.conftest import REPO, synthetic_dataset

import numpy as np

NUM_ITEMS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(synthetic_dataset(num_users=10, num_items=NUM_ITEMS), tmp_path_factory.mktemp("rep") / "d")


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(what, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


class ReplicaSet:
    """`lsc4rec cloud serve --popularity DATA --replicas N` as a process group of its own."""

    def __init__(self, tmp: Path, data: Path, replicas: int = 2, extra: tuple[str, ...] = (),
                 source: tuple[str, ...] | None = None):
        self.tmp, self.log = tmp, tmp / "serve.log"
        self.port_file = tmp / "port"
        cmd = [sys.executable, "-m", "simulator.cli", "cloud", "serve", *(source or ("--popularity", str(data))),
               "--address", "127.0.0.1:0", "--replicas", str(replicas), "--port-file", str(self.port_file),
               "--metrics-port", "0", "--set", "grace_s=3.0", "--set", "replicas.backoff_initial_s=0.2", *extra]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> "ReplicaSet":
        assert wait_for(lambda: self.port_file.exists() or self.proc.poll() is not None, timeout), self.text()
        assert self.port_file.exists(), self.text()
        self.address = f"127.0.0.1:{int(self.port_file.read_text())}"
        self.metrics_port = int(re.search(r"supervisor metrics on http://127.0.0.1:(\d+)", self.text()).group(1))
        return self

    def text(self) -> str:
        return self.log.read_text()

    def metrics(self, port: int | None = None) -> dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port or self.metrics_port}/metrics", timeout=5).read()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                if line and not line.startswith("#")}

    def replica_ports(self) -> list[int]:
        values = self.metrics()
        return [int(v) for k, v in sorted(values.items()) if k.startswith("lsc4rec_replica_metrics_port")]

    def served(self, port: int) -> float:
        return self.metrics(port).get('lsc4rec_requests_total{code="OK",method="GetCandidates"}', 0.0)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def replica_sets():
    started: list[ReplicaSet] = []
    yield started
    for rs in started:
        rs.close()


def spread_calls(address: str, count: int) -> collections.Counter:
    """`count` calls, each on a channel (a connection) of its own, as `count` devices would make them."""
    codes: collections.Counter = collections.Counter()
    for k in range(count):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                pb_grpc.CandidateServiceStub(channel).GetCandidates(
                    pb.GetCandidatesRequest(user_id=f"d{k}", history=[1 + k % 30], num_candidates=3), timeout=5)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
    return codes


# ---------------------------------------------------------------- options and bad input
def test_parse_replicas():
    assert parse_replicas("1") == 1 and parse_replicas("64") == 64 and parse_replicas(" 3 ") == 3
    assert 1 <= parse_replicas("auto") <= MAX_REPLICAS
    for bad in ("0", "65", "-1", "two", ""):
        with pytest.raises(ConfigError, match=r"'--replicas' = .*must be in 1\.\.64 or auto"):
            parse_replicas(bad)


@pytest.mark.parametrize("bad, words", [(["--replicas", "0"], ["--replicas", "'0'", "1..64 or auto"]),
                                        (["--replicas", "65"], ["--replicas", "'65'"]),
                                        (["--replicas", "2", "--metrics-port", "65535"], ["--metrics-port"])])
def test_bad_options_are_one_line_errors(data, capsys, bad, words):
    assert main(["cloud", "serve", "--popularity", str(data), "--address", "127.0.0.1:0", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_port_in_use_is_refused_before_any_replica_starts(data, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["cloud", "serve", "--popularity", str(data), "--address", f"127.0.0.1:{port}",
                     "--replicas", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--address" in err and "in use" in err, err


def test_replica_failing_at_start_stops_all_with_one_line(tmp_path, data, replica_sets):
    empty = tmp_path / "gen"
    empty.mkdir()
    rs = ReplicaSet(tmp_path, data, source=("--generators", str(empty), "--data", str(data)))
    replica_sets.append(rs)
    assert rs.proc.wait(60) == 2
    assert "before it was ready; all replicas stopped" in rs.text()
    assert wait_for(lambda: not children(rs.proc.pid), 5)


@pytest.mark.fault
def test_replica_never_ready_is_a_timeout_error_and_leaves_nothing(tmp_path, data, replica_sets):
    # Only the replicas read --tls-client-ca, and a FIFO with no writer blocks them there: never ready.
    (tmp_path / "key").write_text("not a key")
    (tmp_path / "cert").write_text("not a cert")
    os.mkfifo(tmp_path / "ca")
    rs = ReplicaSet(tmp_path, data, extra=("--set", "replicas.ready_s=1.5", "--tls-key", str(tmp_path / "key"),
                                           "--tls-cert", str(tmp_path / "cert"), "--tls-client-ca",
                                           str(tmp_path / "ca")))
    replica_sets.append(rs)
    assert rs.proc.wait(30) == 2
    assert "not ready within replicas.ready_s = 1.5 s" in rs.text()
    assert wait_for(lambda: not children(rs.proc.pid), 5)


# ---------------------------------------------------------------- a replica set's life
@pytest.mark.fault
def test_replicas_share_the_port_restart_after_a_crash_and_drain_on_sigterm(tmp_path, data, replica_sets):
    rs = ReplicaSet(tmp_path, data).wait_ready()
    replica_sets.append(rs)
    with grpc.insecure_channel(rs.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ports = rs.replica_ports()
    assert len(ports) == 2
    assert spread_calls(rs.address, 24) == {"OK": 24}
    served = [rs.served(p) for p in ports]
    assert all(n > 0 for n in served) and sum(served) == 24, served  # the kernel spread the connections

    pids = children(rs.proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)  # a crash
    assert wait_for(lambda: rs.metrics().get('lsc4rec_replica_restarts_total{replica="0"}', 0)
                    + rs.metrics().get('lsc4rec_replica_restarts_total{replica="1"}', 0) == 1, 15)
    assert wait_for(lambda: rs.metrics().get("lsc4rec_replicas_serving") == 2, 15), rs.text()
    new = children(rs.proc.pid)
    assert len(new) == 2 and pids[0] not in new and pids[1] in new
    assert spread_calls(rs.address, 8) == {"OK": 8}

    rs.proc.send_signal(signal.SIGTERM)
    assert rs.proc.wait(30) == 0, rs.text()
    assert not any(alive(pid) for pid in new)
    text = rs.text()
    assert "exited with code -9; restart 1" in text and text.count("[replica 0]: stopped") >= 1


@pytest.mark.fault
def test_sigkill_of_the_parent_leaves_no_replica(tmp_path, data, replica_sets):
    rs = ReplicaSet(tmp_path, data).wait_ready()
    replica_sets.append(rs)
    pids = children(rs.proc.pid)
    assert len(pids) == 2
    rs.proc.kill()
    rs.proc.wait(10)
    started = time.monotonic()
    assert wait_for(lambda: not any(alive(pid) for pid in pids), 8), [p for p in pids if alive(p)]
    assert time.monotonic() - started < 8


@pytest.mark.fault
def test_rolling_replacement_under_load_loses_no_event(tmp_path, data, replica_sets):
    """SIGHUP replaces both replicas one at a time while 20 devices call: no call fails, no event is lost.

    UNAVAILABLE (a connection reset when a listener closes) and CANCELLED (gRPC's own bug grpc/grpc#41785: at
    shutdown, calls the core received but had not yet handed to the server's handlers are cancelled instead of
    refused) are retried by the client's retry policy (device.runtime.client.RETRYABLE_CODES)."""
    rs = ReplicaSet(tmp_path, data).wait_ready()
    replica_sets.append(rs)
    before = set(children(rs.proc.pid))
    stop, results = threading.Event(), {}

    def device(d: int) -> None:
        # a deadline that a 2-core machine starting a replica under load keeps (latency is bench_replicas' figure)
        config = ClientConfig(address=rs.address, timeout_s=10.0, max_attempts=5, backoff_initial_s=0.02,
                              backoff_max_s=0.2)
        ok, failed, events = 0, [], 0
        with CloudClient(config, NUM_ITEMS) as client:
            while not stop.is_set() and events < 2000:
                events += 1
                history = tuple(1 + (d + k) % NUM_ITEMS for k in range(min(events, 5)))
                try:
                    client.get_candidates(CandidateRequest(f"dev{d}", tuple(dict.fromkeys(history)), 3))
                    ok += 1
                except LSC4RecError as exc:
                    failed.append(str(exc))
                time.sleep(0.01)
        results[d] = (events, ok, failed)

    threads = [threading.Thread(target=device, args=(d,), daemon=True) for d in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    rs.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "rolling replacement done" in rs.text(), 30), rs.text()
    assert wait_for(lambda: len(children(rs.proc.pid)) == 2, 10)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(20)
    after = set(children(rs.proc.pid))
    assert not before & after  # both replaced
    assert len(results) == 20
    failed = [f for _, _, fs in results.values() for f in fs]
    print({"figure": "replicas.rolling", "devices": 20, "calls": sum(e for e, _, _ in results.values()),
           "failed": collections.Counter(failed)})
    assert failed == [], failed[:5]
    assert all(events == ok + len(fs) and ok > 0 for events, ok, fs in results.values())
    rs.proc.send_signal(signal.SIGTERM)
    assert rs.proc.wait(30) == 0


# ---------------------------------------------------------------- the client over several servers
def _server(**overrides):
    config = ServerConfig(address="127.0.0.1:0", grace_s=2.0, **overrides)
    return create_server(config, PopularityGenerator(np.arange(NUM_ITEMS + 1, dtype=np.float64)))


def _served(server) -> float:
    return server.metrics.count("GetCandidates", "OK")


def test_channel_targets():
    assert channel_target("127.0.0.1:5") == ("127.0.0.1:5", False)
    assert channel_target("127.0.0.1:5, 127.0.0.1:6") == ("ipv4:127.0.0.1:5,127.0.0.1:6", True)
    assert channel_target("[::1]:5,[::1]:6") == ("ipv6:[::1]:5,[::1]:6", True)
    assert channel_target("dns:///cloud.example:50051") == ("dns:///cloud.example:50051", True)
    for bad, why in [("a.example:1,b.example:2", "dns:///"), ("127.0.0.1:1,", "not IP:port"),
                     ("127.0.0.1:1,[::1]:2", "all be IPv4 or all IPv6")]:
        with pytest.raises(ConfigError, match=re.escape(why)):
            ClientConfig(address=bad)


def test_round_robin_spreads_calls_and_skips_a_draining_server():
    (a, port_a), (b, port_b) = _server(), _server(drain_s=1.5)
    try:
        config = ClientConfig(address=f"127.0.0.1:{port_a},127.0.0.1:{port_b}", timeout_s=5.0)
        with CloudClient(config, NUM_ITEMS) as client:
            for k in range(20):
                client.get_candidates(CandidateRequest(f"u{k}", (1 + k,), 3))
            assert _served(a) >= 5 and _served(b) >= 5 and _served(a) + _served(b) == 20
            stopper = threading.Thread(target=b.stop)
            stopper.start()
            assert wait_for(lambda: b.draining, 5)
            time.sleep(0.3)  # the NOT_SERVING update reaches the client's health watch
            before_b = _served(b)
            for k in range(20):  # during b's drain_s: b still answers, but health checking sends nothing its way
                client.get_candidates(CandidateRequest(f"v{k}", (1 + k,), 3))
            assert _served(b) == before_b
            stopper.join(10)
            assert not stopper.is_alive()
            assert client.stats.codes == {"OK": 40}
    finally:
        a.stop(0)
        b.stop(0)


def test_dns_target_balances_too():
    server, port = _server()
    try:
        with CloudClient(ClientConfig(address=f"dns:///localhost:{port}", timeout_s=5.0), NUM_ITEMS) as client:
            for k in range(5):
                client.get_candidates(CandidateRequest(f"u{k}", (1 + k,), 3))
        assert _served(server) == 5
    finally:
        server.stop(0)

