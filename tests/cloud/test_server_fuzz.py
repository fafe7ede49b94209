"""Bad input never crashes the server: >= 1,000 random requests and raw byte strings, then a valid call works."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import wire
from shared.generator import PopularityGenerator
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from tests.cloud.test_server import CODE, NUM_ITEMS, call_code, health_status, request, start

INT64 = st.integers(-(2**63), 2**63 - 1)
ITEM = st.one_of(st.integers(-3, NUM_ITEMS + 3), INT64)  # mostly near the valid range
# Cheap to generate (hypothesis time dominates otherwise): short odd strings, or long ones near the limit.
TEXT = st.one_of(st.text("ab\x00\u00e9\U0001f600 ", max_size=12), st.integers(250, 300).map(lambda k: "u" * k))
REQUESTS = st.builds(
    pb.GetCandidatesRequest,
    user_id=TEXT, history=st.lists(ITEM, max_size=30), num_candidates=st.integers(-(2**31), 2**31 - 1)
    | st.integers(-2, NUM_ITEMS + 2), exclude=st.lists(ITEM, max_size=10), request_id=TEXT,
    device_model_version=TEXT)


@pytest.fixture(scope="module")
def target():
    server, port = start(PopularityGenerator(np.arange(NUM_ITEMS + 1)))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel
    channel.close()
    server.stop(0)


def test_random_requests_get_typed_answers_and_server_stays_serving(target):
    stub = pb_grpc.CandidateServiceStub(target)
    seen = {"n": 0}

    @settings(max_examples=1000, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(REQUESTS)
    def one(msg):
        seen["n"] += 1
        try:
            reply = stub.GetCandidates(msg, timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == CODE.INVALID_ARGUMENT, (exc.code(), exc.details())
            return
        response = wire.response_from_pb(reply, NUM_ITEMS)  # an OK answer is a valid one
        blocked = set(msg.history) | set(msg.exclude)
        assert len(response.candidates) == msg.num_candidates
        assert not blocked & {c.item for c in response.candidates}

    one()
    assert seen["n"] >= 1000
    assert call_code(stub.GetCandidates, request()) == CODE.OK
    assert health_status(target) == health_pb2.HealthCheckResponse.SERVING


def test_random_raw_bytes_to_every_method_never_crash(target):
    methods = ["/lsc4rec.v1.CandidateService/GetCandidates", "/lsc4rec.v1.ModelService/GetLatestManifest"]
    raw = [target.unary_unary(m) for m in methods]
    stream = target.unary_stream("/lsc4rec.v1.ModelService/DownloadModel")

    @settings(max_examples=200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=200), st.integers(0, 2))
    def one(junk, which):
        try:
            if which < 2:
                raw[which](junk, timeout=5)
            else:
                list(stream(junk, timeout=5))
        except grpc.RpcError as exc:
            assert exc.code() in (CODE.INTERNAL, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND), exc.details()

    one()
    stub = pb_grpc.CandidateServiceStub(target)
    assert call_code(stub.GetCandidates, request()) == CODE.OK
    assert health_status(target) == health_pb2.HealthCheckResponse.SERVING
