"""CloudClient: deadlines, gRPC retries of UNAVAILABLE only, validated answers, verified atomic downloads, no torch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from cloud.registry import publish
from cloud.server import ServerConfig, create_server
from device.runtime.client import ClientConfig, CloudClient, CloudError, CloudUnavailableError, retry_service_config
from shared.errors import ChecksumError, ConfigError, InvalidArgumentError, ManifestError, UnavailableError
from shared.generator import PopularityGenerator
from shared.manifest import verify_artifact
from shared.records import CandidateRequest, ModelFormat
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from tests.cloud.test_registry import make_artifact
from tests.conftest import REPO

NUM_ITEMS = 50
REQ = CandidateRequest("u1", (1, 2, 3), 5)


class Scripted(pb_grpc.CandidateServiceServicer, pb_grpc.ModelServiceServicer):
    """Answers GetCandidates from a script of status codes (then OK); serves fixed download chunks (after a script
    of status codes of its own). Counts the attempts that reach it."""

    def __init__(self, codes=(), delay_s: float = 0.0, candidates=(10, 11, 12), chunks=(), download_codes=()):
        self.codes = list(codes)
        self.delay_s = delay_s
        self.candidates = candidates
        self.chunks = list(chunks)
        self.download_codes = list(download_codes)
        self.calls = 0
        self.downloads = 0
        self.metadata = []

    def GetCandidates(self, request, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.codes:
            context.abort(self.codes.pop(0), "scripted failure")
        time.sleep(self.delay_s)
        return pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=i, score=1.0) for i in self.candidates],
                                        generator_version="scripted", request_id=request.request_id)

    def DownloadModel(self, request, context):
        self.downloads += 1
        if self.download_codes:
            context.abort(self.download_codes.pop(0), "scripted failure")
        yield from self.chunks


@pytest.fixture
def scripted():
    """Start a scripted server; yields a factory (servicer) -> address."""
    servers = []

    def serve(servicer: Scripted) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_CandidateServiceServicer_to_server(servicer, server)
        pb_grpc.add_ModelServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield serve
    for server in servers:
        server.stop(0)


def client(address: str, **kwargs) -> CloudClient:
    config = ClientConfig(address=address, **{"timeout_s": 5.0, "backoff_initial_s": 0.01, **kwargs})
    return CloudClient(config, NUM_ITEMS)


def test_unavailable_is_retried_by_grpc_then_succeeds(scripted):
    servicer = Scripted(codes=[grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    c = client(scripted(servicer), max_attempts=3)
    response = c.get_candidates(REQ)
    assert [x.item for x in response.candidates] == [10, 11, 12]
    assert servicer.calls == 3  # three attempts reached the server
    assert [m.get("grpc-previous-rpc-attempts") for m in servicer.metadata] == [None, "1", "2"]  # gRPC's retries
    rids = {m["x-request-id"] for m in servicer.metadata}
    assert len(rids) == 1 and response.request_id in rids  # one id across retries
    assert c.stats.codes == {"OK": 1} and c.stats.calls == 1  # one call, whatever its attempts


def test_attempts_are_bounded(scripted):
    servicer = Scripted(codes=[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(CloudUnavailableError) as err:
        client(scripted(servicer), max_attempts=4).get_candidates(REQ)
    assert servicer.calls == 4
    assert err.value.code == "UNAVAILABLE"
    assert isinstance(err.value, UnavailableError)  # the device falls back to its cache on this type


def test_backoff_is_bounded_by_its_cap(scripted):
    servicer = Scripted(codes=[grpc.StatusCode.UNAVAILABLE] * 4)
    c = client(scripted(servicer), max_attempts=5, backoff_initial_s=0.05, backoff_max_s=0.1)
    start = time.monotonic()
    c.get_candidates(REQ)
    # four pauses, each drawn from [0, cap] with cap 0.05, 0.1, 0.1, 0.1
    assert servicer.calls == 5 and time.monotonic() - start < 0.35 + 0.5


@pytest.mark.parametrize("code, error", [
    (grpc.StatusCode.UNAUTHENTICATED, CloudError),
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.INTERNAL, CloudError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, CloudUnavailableError),
])
def test_other_codes_are_never_retried(scripted, code, error):
    servicer = Scripted(codes=[code, code, code])
    with pytest.raises(error):
        client(scripted(servicer), max_attempts=5).get_candidates(REQ)
    assert servicer.calls == 1


def test_the_retry_policy_is_grpcs_service_config():
    config = json.loads(retry_service_config(ClientConfig(max_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0)))
    (method,) = config["methodConfig"]
    assert method["retryPolicy"] == {"maxAttempts": 4, "initialBackoff": "0.050000000s", "maxBackoff": "1.000000000s",
                                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}
    assert {(n["service"], n["method"]) for n in method["name"]} == {
        ("lsc4rec.v1.CandidateService", "GetCandidates"), ("lsc4rec.v1.ModelService", "GetLatestManifest")}
    # one attempt: no policy at all (gRPC refuses maxAttempts 1)
    assert "retryPolicy" not in json.loads(retry_service_config(ClientConfig(max_attempts=1)))["methodConfig"][0]


@pytest.mark.parametrize("field, value", [("max_attempts", 0), ("max_attempts", 6), ("backoff_initial_s", 0.0),
                                          ("backoff_initial_s", 2.0)])
def test_retry_settings_grpc_cannot_honour_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        ClientConfig(**{field: value})


def test_a_download_is_never_retried(scripted, tmp_path):
    manifest = make_artifact(tmp_path / "a", b"0123456789")
    servicer = Scripted(download_codes=[grpc.StatusCode.UNAVAILABLE])
    with pytest.raises(CloudUnavailableError):
        client(scripted(servicer), max_attempts=5).download(manifest, tmp_path / "device")
    assert servicer.downloads == 1 and list((tmp_path / "device").iterdir()) == []


def test_every_call_has_a_deadline(scripted):
    servicer = Scripted(delay_s=1.0)
    c = client(scripted(servicer), timeout_s=0.2)
    start = time.monotonic()
    with pytest.raises(CloudUnavailableError) as err:
        c.get_candidates(REQ)
    assert err.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - start < 0.9
    assert servicer.calls == 1


@pytest.mark.parametrize("candidates, field", [((10, 10), "duplicates"), ((10, 99), "catalogue"),
                                               ((10, 2), "history or exclude")])
def test_invalid_answers_are_refused(scripted, candidates, field):
    c = client(scripted(Scripted(candidates=candidates)))
    with pytest.raises(InvalidArgumentError, match=field):
        c.get_candidates(REQ)


def test_bytes_are_counted_per_call(scripted):
    c = client(scripted(Scripted()))
    c.get_candidates(REQ)
    first = (c.stats.last_request_bytes, c.stats.last_response_bytes)
    assert first[0] > 0 and first[1] > 0
    c.get_candidates(CandidateRequest("u1", tuple(range(13, 50)), 3))
    assert c.stats.last_request_bytes > first[0]
    assert c.stats.request_bytes == first[0] + c.stats.last_request_bytes


def test_against_real_server_with_token_latest_manifest_and_verified_download(tmp_path):
    models = tmp_path / "models"
    payload = bytes(np.random.default_rng(1).integers(0, 256, 150_000, dtype=np.uint8))
    v1 = make_artifact(tmp_path / "a1", payload, minute=1)
    publish(tmp_path / "a1", models)
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.5),
                                 PopularityGenerator(np.arange(NUM_ITEMS + 1)), models,
                                 address="127.0.0.1:0", token="tok")
    try:
        with pytest.raises(CloudError, match="UNAUTHENTICATED"):
            client(f"127.0.0.1:{port}").get_candidates(REQ)
        c = client(f"127.0.0.1:{port}", token="tok")
        assert len(c.get_candidates(REQ).candidates) == 5
        manifest, update = c.latest_manifest(ModelFormat.ONNX, current_version="")
        assert manifest == v1 and update
        assert c.latest_manifest(ModelFormat.ONNX, current_version=v1.version) == (v1, False)
        folder = c.download(manifest, tmp_path / "device")
        assert verify_artifact(folder)[0] == v1
        assert (folder / v1.file_name).read_bytes() == payload
        assert c.stats.response_bytes > len(payload)
        assert c.download(manifest, tmp_path / "device") == folder  # already there: re-verified, reused
    finally:
        server.stop(0)


@pytest.mark.parametrize("damage", ["bytes", "short", "offset", "announced_sha"])
def test_download_mismatch_is_discarded(scripted, tmp_path, damage):
    manifest = make_artifact(tmp_path / "a", b"0123456789" * 10)
    data = b"0123456789" * 10
    chunks = [pb.ModelChunk(offset=0, data=data[:50], sha256=manifest.sha256, total_size=100),
              pb.ModelChunk(offset=50, data=data[50:])]
    if damage == "bytes":
        chunks[1] = pb.ModelChunk(offset=50, data=b"x" * 50)
    elif damage == "short":
        chunks = chunks[:1]
    elif damage == "offset":
        chunks[1] = pb.ModelChunk(offset=60, data=data[50:])
    else:
        chunks[0] = pb.ModelChunk(offset=0, data=data[:50], sha256="0" * 64, total_size=100)
    c = client(scripted(Scripted(chunks=chunks)))
    with pytest.raises((ChecksumError, ManifestError)):
        c.download(manifest, tmp_path / "device")
    assert list((tmp_path / "device").iterdir()) == []  # nothing half-written is left


def test_client_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import device.runtime.client; assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
