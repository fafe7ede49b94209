"""Contract tests of the cloud server: one per status code, health, reflection, TLS, metrics, bad input."""
from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cloud.batcher import BatcherConfig
from cloud.server import ServerConfig, create_server
from shared import wire
from shared.generator import PopularityGenerator
from shared.records import Candidate
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

NUM_ITEMS = 50
CODE = grpc.StatusCode


class GatedGenerator:
    """Popularity answers, but each call waits for `gate` (tests hold calls in flight); counts batches."""

    def __init__(self, num_items: int = NUM_ITEMS, fail: bool = False):
        self.inner = PopularityGenerator(np.arange(num_items + 1))
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail
        self.batches: list[int] = []

    version = "gated-1"

    @property
    def num_items(self) -> int:
        return self.inner.num_items

    def generate(self, histories, n, excludes=None) -> list[list[Candidate]]:
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"
        self.batches.append(len(histories))
        if self.fail and any(len(h) == 3 for h in histories):  # warm-up (1 item) passes
            raise RuntimeError("boom: simulated backend bug")
        return self.inner.generate(histories, n, excludes)


def request(history=(1, 2, 3), n=5, user="u1", exclude=(), rid="") -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(user_id=user, history=list(history), num_candidates=n,
                                   exclude=list(exclude), request_id=rid)


def start(generator=None, models_dir=None, **kwargs):
    config = kwargs.pop("config", ServerConfig(address="127.0.0.1:0", grace_s=1.0))
    server, port = create_server(config, generator, models_dir, address="127.0.0.1:0", **kwargs)
    return server, port


@pytest.fixture
def served():
    """(server, channel, stub) against a popularity generator; stopped after the test."""
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel, pb_grpc.CandidateServiceStub(channel)
    channel.close()
    server.stop(0)


def health_status(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def call_code(fn, *args, **kwargs) -> grpc.StatusCode:
    try:
        fn(*args, timeout=kwargs.pop("timeout", 5), **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return CODE.OK


def test_ok_echoes_request_id_and_answers_valid_candidates(served):
    server, channel, stub = served
    reply = stub.GetCandidates(request(exclude=(50,)), timeout=5, metadata=(("x-request-id", "abc-1"),))
    response = wire.response_from_pb(reply, NUM_ITEMS)
    items = [c.item for c in response.candidates]
    assert items == [49, 48, 47, 46, 45]  # most popular first, excluded 50 absent
    assert response.request_id == "abc-1" and response.generator_version == "popularity"
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(channel, "lsc4rec.v1.CandidateService") == health_pb2.HealthCheckResponse.SERVING
    assert len(stub.GetCandidates(request()).candidates) == 5  # a call without a deadline gets the server's


@pytest.mark.parametrize("msg, field, value", [
    (request(history=(1, 99)), "history[1]", "99"),
    (request(exclude=(0,)), "exclude[0]", "0"),
    (request(n=0), "num_candidates", "0"),
    (request(n=48), "num_candidates", "48"),  # 50 items - 3 in history = 47 at most
    (request(n=201), "num_candidates", "201"),
    (request(user=""), "user_id", "''"),
    (request(history=[1] * 1025), "history", "1025 items"),
])
def test_invalid_argument_names_field_and_value(served, msg, field, value):
    _, _, stub = served
    with pytest.raises(grpc.RpcError) as err:
        stub.GetCandidates(msg, timeout=5)
    assert err.value.code() == CODE.INVALID_ARGUMENT
    assert field in err.value.details() and value in err.value.details()


def test_resource_exhausted_when_in_flight_limit_reached():
    gen = GatedGenerator()
    config = ServerConfig(address="127.0.0.1:0", max_in_flight=1, grace_s=1.0)
    server, port = start(gen, config=config)
    try:
        stub = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        gen.gate.clear()
        gen.entered.clear()
        held = stub.GetCandidates.future(request(), timeout=10)
        assert gen.entered.wait(5)
        assert call_code(stub.GetCandidates, request()) == CODE.RESOURCE_EXHAUSTED
        gen.gate.set()
        assert len(held.result().candidates) == 5
        assert call_code(stub.GetCandidates, request()) == CODE.OK  # the limit frees up again
        assert server.metrics.count("GetCandidates", "RESOURCE_EXHAUSTED") == 1
    finally:
        gen.gate.set()
        server.stop(0)


def test_unavailable_until_generator_is_loaded_then_serving():
    server, port = start(None)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CandidateServiceStub(channel)
        assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert call_code(stub.GetCandidates, request()) == CODE.UNAVAILABLE
        server.set_generator(PopularityGenerator(np.arange(NUM_ITEMS + 1)))
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert call_code(stub.GetCandidates, request()) == CODE.OK
    finally:
        server.stop(0)


@contextlib.contextmanager
def _generator_held():
    """A server (batches of 1) whose generator is busy with one held call: (gen, server, stub, held, batches so far)."""
    gen = GatedGenerator()
    config = ServerConfig(address="127.0.0.1:0", grace_s=1.0, batch=BatcherConfig(max_batch_size=1))
    server, port = start(gen, config=config)
    try:
        stub = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        gen.gate.clear()
        gen.entered.clear()
        held = stub.GetCandidates.future(request(), timeout=10)  # occupies the generator
        assert gen.entered.wait(5)
        yield gen, server, stub, held, len(gen.batches)
    finally:
        gen.gate.set()
        server.stop(0)


def test_deadline_exceeded_and_expired_request_dropped_from_batch():
    with _generator_held() as (gen, server, stub, held, calls_before):
        assert call_code(stub.GetCandidates, request(history=(4,)), timeout=0.3) == CODE.DEADLINE_EXCEEDED
        gen.gate.set()
        held.result()
        _until(lambda: server.candidates.batcher.dropped >= 1)
        assert server.candidates.batcher.dropped == 1
        assert len(gen.batches) == calls_before + 1  # only the held call ran; the late one never did


def test_cancelled_and_late_calls_are_counted_and_never_computed():
    with _generator_held() as (gen, server, stub, held, calls_before):
        assert call_code(stub.GetCandidates, request(history=(4,)), timeout=0.3) == CODE.DEADLINE_EXCEEDED
        _until(lambda: server.candidates.in_flight == 1)  # the late call has ended on the server too
        gone = stub.GetCandidates.future(request(history=(5,)), timeout=10)
        _until(lambda: server.candidates.in_flight == 2)  # the held call and this one
        gone.cancel()  # the device gives up: the server's task is cancelled, its queued request dropped
        _until(lambda: server.metrics.count("GetCandidates", "CANCELLED") == 1)
        gen.gate.set()
        assert len(held.result().candidates) == 5
        _until(lambda: server.candidates.batcher.dropped == 2)
        assert len(gen.batches) == calls_before + 1  # only the held call reached the generator
        assert server.metrics.count("GetCandidates", "DEADLINE_EXCEEDED") == 1
        assert server.candidates.in_flight == 0


def test_stop_is_idempotent_and_leaves_no_thread_behind():
    before = set(threading.enumerate())
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)))
    stub = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    assert len(stub.GetCandidates(request(), timeout=5).candidates) == 5
    assert server.wait(0.01) is True  # still serving: the wait timed out
    stoppers = [threading.Thread(target=server.stop, args=(1.0,)) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(15)
    server.stop(0)  # a third time, after the fact: returns at once
    assert server.wait(0) is False and server.draining
    _until(lambda: not [t for t in set(threading.enumerate()) - before if t.name in ("grpc-aio", "micro-batcher")])


def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_unauthenticated_without_or_with_wrong_token_health_exempt():
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)), token="s3cret")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.CandidateServiceStub(channel)
        models = pb_grpc.ModelServiceStub(channel)
        assert call_code(stub.GetCandidates, request()) == CODE.UNAUTHENTICATED
        wrong = (("authorization", "Bearer s3cres"),)
        assert call_code(stub.GetCandidates, request(), metadata=wrong) == CODE.UNAUTHENTICATED
        stream = models.DownloadModel(pb.DownloadModelRequest(version="x"), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == CODE.UNAUTHENTICATED
        right = (("authorization", "Bearer s3cret"),)
        assert call_code(stub.GetCandidates, request(), metadata=right) == CODE.OK
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING  # no token needed
    finally:
        server.stop(0)


def test_internal_error_logs_request_id(caplog):
    gen = GatedGenerator(fail=True)
    server, port = start(gen)
    try:
        stub = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with caplog.at_level(logging.ERROR, logger="lsc4rec.cloud"):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetCandidates(request(rid="rid-internal-7"), timeout=5)
        assert err.value.code() == CODE.INTERNAL
        assert "rid-internal-7" in err.value.details() and "boom" not in err.value.details()
        assert any("rid-internal-7" in r.getMessage() and "boom" in r.getMessage() for r in caplog.records)
    finally:
        server.stop(0)


def test_not_found_for_unpublished_version_and_format(tmp_path):
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)), models_dir=tmp_path)
    try:
        models = pb_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert call_code(models.GetLatestManifest, pb.GetLatestManifestRequest()) == CODE.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            list(models.DownloadModel(pb.DownloadModelRequest(version="nope"), timeout=5))
        assert err.value.code() == CODE.NOT_FOUND and "nope" in err.value.details()
        bad_format = pb.GetLatestManifestRequest(format=7)
        assert call_code(models.GetLatestManifest, bad_format) == CODE.INVALID_ARGUMENT
    finally:
        server.stop(0)


def test_oversize_unknown_method_and_malformed_bytes_leave_server_healthy(served):
    _, channel, stub = served
    huge = pb.GetCandidatesRequest(user_id="u", history=[2**40] * 300_000, num_candidates=5)  # ~1.8 MB > 1 MiB
    assert call_code(stub.GetCandidates, huge) == CODE.RESOURCE_EXHAUSTED
    unknown = channel.unary_unary("/lsc4rec.v1.CandidateService/Nope")
    assert call_code(unknown, b"") == CODE.UNIMPLEMENTED
    raw = channel.unary_unary("/lsc4rec.v1.CandidateService/GetCandidates")  # bytes in, bytes out
    for junk in (b"\xff\xff\xff", b"\x0a\xff", bytes(range(256)), b"\x12\x03\x01\x02"):
        with pytest.raises(grpc.RpcError) as err:  # decided by cloud.errors, not gRPC's UNKNOWN
            raw(junk, timeout=5)
        assert err.value.code() == CODE.INVALID_ARGUMENT
        assert "not a valid GetCandidatesRequest" in err.value.details() and "request_id=" in err.value.details()
    assert call_code(stub.GetCandidates, request()) == CODE.OK
    assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(served):
    _, channel, _ = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"lsc4rec.v1.CandidateService", "lsc4rec.v1.ModelService", "grpc.health.v1.Health"} <= names


def test_metrics_count_codes_batches_and_serve_http():
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)), metrics_port=0)
    try:
        stub = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        for _ in range(3):
            stub.GetCandidates(request(), timeout=5)
        call_code(stub.GetCandidates, request(n=0))
        assert server.metrics.count("GetCandidates", "OK") == 3
        assert server.metrics.count("GetCandidates", "INVALID_ARGUMENT") == 1
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        assert 'lsc4rec_requests_total{code="OK",method="GetCandidates"} 3.0' in text
        assert "lsc4rec_batch_size_count 3.0" in text and "lsc4rec_queue_depth" in text
        assert "lsc4rec_request_seconds_bucket" in text
    finally:
        server.stop(0)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def test_tls_with_throwaway_certificate(tmp_path):
    key, cert = _self_signed(tmp_path)
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)), tls=(key.read_bytes(), cert.read_bytes()))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        secure = pb_grpc.CandidateServiceStub(grpc.secure_channel(f"localhost:{port}", creds))
        assert len(secure.GetCandidates(request(), timeout=10).candidates) == 5
        plain = pb_grpc.CandidateServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert call_code(plain.GetCandidates, request(), timeout=2) == CODE.UNAVAILABLE
    finally:
        server.stop(0)


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[2] / "cloud" / "presets").glob("*.toml")))
def test_config_presets_load(preset):
    from shared.config import load_config

    config = load_config(ServerConfig, preset)
    assert config.threads > config.max_in_flight  # room for health and model calls beside the limit
