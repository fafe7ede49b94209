"""Security: bearer token on every RPC but health, no retry of a wrong token, TLS, verified downloads, clean logs."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cloud.server import ServerConfig, create_server
from device.runtime.client import ClientConfig, CloudClient, CloudError, CloudUnavailableError
from device.runtime.artifact import ModelHolder, load_reranker
from shared.errors import ChecksumError, LSC4RecError
from shared.manifest import read_manifest
from shared.records import CandidateRequest
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from tests.reliability import models
from tests.reliability.harness import NUM_ITEMS, REPO, DelayGenerator

pytestmark = pytest.mark.fault
TOKEN = "s3cr3t-" + hashlib.sha256(b"reliability").hexdigest()[:24]


def _code(fn, *args, **kwargs) -> str:
    try:
        reply = fn(*args, **kwargs)
        if hasattr(reply, "__next__"):
            list(reply)
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


@pytest.fixture
def models_dir(good_model, tmp_path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(good_model, folder / "onnx-v1")
    return folder


def _calls(channel, metadata) -> dict[str, str]:
    """Each RPC of the project's services, plus reflection, with `metadata`: name -> status."""
    cand, model = pb_grpc.CandidateServiceStub(channel), pb_grpc.ModelServiceStub(channel)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "GetCandidates": _code(cand.GetCandidates, pb.GetCandidatesRequest(user_id="u", history=[1], num_candidates=3),
                               timeout=5, metadata=metadata),
        "GetLatestManifest": _code(model.GetLatestManifest, pb.GetLatestManifestRequest(), timeout=5,
                                   metadata=metadata),
        "DownloadModel": _code(model.DownloadModel, pb.DownloadModelRequest(version="v1"), timeout=5,
                               metadata=metadata),
        "ServerReflectionInfo": _code(refl.ServerReflectionInfo,
                                      iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5,
                                      metadata=metadata),
    }


def test_token_required_on_every_rpc_except_health(models_dir):
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(), models_dir,
                                 address="127.0.0.1:0", token=TOKEN)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            missing = _calls(channel, ())
            wrong = _calls(channel, (("authorization", f"Bearer {TOKEN[:-1]}x"),))
            no_scheme = _calls(channel, (("authorization", TOKEN),))
            right = _calls(channel, (("authorization", f"Bearer {TOKEN}"),))
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        print(json.dumps({"figure": "security.token", "missing": missing, "wrong": wrong, "right": right}))
        for outcome in (missing, wrong, no_scheme):
            assert set(outcome.values()) == {"UNAUTHENTICATED"}, outcome
        assert set(right.values()) == {"OK"}, right
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # health needs no token
    finally:
        server.stop(0)


def test_wrong_token_is_never_retried_by_the_client():
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(),
                                 address="127.0.0.1:0", token=TOKEN)
    config = ClientConfig(address=f"127.0.0.1:{port}", token="not-the-token", max_attempts=5)
    try:
        with CloudClient(config, NUM_ITEMS) as client:
            for _ in range(3):
                with pytest.raises(CloudError) as err:
                    client.get_candidates(CandidateRequest("u", (1, 2), 3))
                assert err.value.code == "UNAUTHENTICATED"
                assert TOKEN not in str(err.value)
            assert client.stats.calls == 3 and client.stats.codes == {"UNAUTHENTICATED": 3}
        assert server.metrics.count("GetCandidates", "UNAUTHENTICATED") == 3  # the server saw no retry either
    finally:
        server.stop(0)


# --- TLS with throw-away certificates --------------------------------------------------------

def _certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 signed by it, a client certificate, and
    an unrelated CA (PEM files). Uses `cryptography` when importable, else the openssl CLI."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _openssl_certificates(folder)
    return _cryptography_certificates(folder)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _openssl_certificates(folder: Path) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("neither the cryptography package nor the openssl CLI is available")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "1",
                 "-subj", f"/CN=reliability-{ca}", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    (folder / "client.ext").write_text("basicConstraints=CA:FALSE\n")
    for name in ("server", "client"):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)
    return {"ca_cert": folder / "ca.pem", "other_ca_cert": folder / "other_ca.pem",
            **{f"{n}_{k}": folder / f"{n}.{'key' if k == 'key' else 'pem'}" for n in ("server", "client")
               for k in ("key", "cert")}}


def _cryptography_certificates(folder: Path) -> dict[str, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name: str, key, issuer_name, issuer_key, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    out = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reliability-test-ca")])
    ca = cert("reliability-test-ca", ca_key, ca_name, ca_key, True)
    for name, san in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", None), ("other_ca", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = cert(name, key, ca_name, ca_key, False, san) if name != "other_ca" else \
            cert(name, key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, True)
        out[f"{name}_key"] = folder / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        out[f"{name}_cert"] = folder / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(issued.public_bytes(serialization.Encoding.PEM))
    out["ca_cert"] = folder / "ca.pem"
    out["ca_cert"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


def test_tls_device_client_verifies_the_server(tmp_path):
    certs = _certificates(tmp_path)
    tls = (certs["server_key"].read_bytes(), certs["server_cert"].read_bytes())
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(),
                                 address="127.0.0.1:0", token=TOKEN, tls=tls)
    request = CandidateRequest("u", (1, 2), 3)
    outcomes = {}
    try:
        good = ClientConfig(address=f"localhost:{port}", tls_ca_file=str(certs["ca_cert"]), token=TOKEN, timeout_s=5)
        with CloudClient(good, NUM_ITEMS) as client:
            outcomes["trusted_ca"] = len(client.get_candidates(request).candidates)
        for name, config in (
                ("untrusted_ca", dataclasses.replace(good, tls_ca_file=str(certs["other_ca_cert"]))),
                ("plaintext", dataclasses.replace(good, tls_ca_file="")),
                ("wrong_name", dataclasses.replace(good, tls_server_name="evil.example"))):
            with CloudClient(dataclasses.replace(config, timeout_s=2, max_attempts=1), NUM_ITEMS) as client:
                with pytest.raises(CloudUnavailableError) as err:
                    client.get_candidates(request)
                outcomes[name] = err.value.code
        print(json.dumps({"figure": "security.tls", **outcomes}))
        assert outcomes == {"trusted_ca": 3, "untrusted_ca": "UNAVAILABLE", "plaintext": "UNAVAILABLE",
                            "wrong_name": "UNAVAILABLE"}
    finally:
        server.stop(0)


def test_mutual_tls_refuses_a_client_without_a_certificate_and_admits_one_with(tmp_path):
    certs = _certificates(tmp_path)
    tls = (certs["server_key"].read_bytes(), certs["server_cert"].read_bytes())
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(),
                                 address="127.0.0.1:0", tls=tls, tls_client_ca=certs["ca_cert"].read_bytes())
    base = dict(address=f"localhost:{port}", tls_ca_file=str(certs["ca_cert"]), timeout_s=5, max_attempts=1)
    try:
        with CloudClient(ClientConfig(**base), NUM_ITEMS) as client:
            with pytest.raises(CloudUnavailableError):
                client.get_candidates(CandidateRequest("u", (1, 2), 3))
        signed = ClientConfig(**base, tls_cert_file=str(certs["client_cert"]), tls_key_file=str(certs["client_key"]))
        with CloudClient(signed, NUM_ITEMS) as client:
            assert len(client.get_candidates(CandidateRequest("u", (1, 2), 3)).candidates) == 3
    finally:
        server.stop(0)


# --- the model download path -----------------------------------------------------------------

def test_download_refuses_an_artifact_tampered_after_publication(models_dir, good_model, tmp_path):
    """The registry verified the file once; it is then replaced on disk. The device must refuse the bytes."""
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(), models_dir,
                                 address="127.0.0.1:0", token=TOKEN)
    client = CloudClient(ClientConfig(address=f"127.0.0.1:{port}", token=TOKEN, timeout_s=5), NUM_ITEMS)
    dest = tmp_path / "device"
    try:
        manifest, _ = client.latest_manifest()
        data = bytearray((models_dir / "onnx-v1" / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0x01  # same size, one bit
        (models_dir / "onnx-v1" / "model.onnx").write_bytes(bytes(data))
        with pytest.raises(ChecksumError):
            client.download(manifest, dest)
        (models_dir / "onnx-v1" / "model.onnx").write_bytes(bytes(data) + b"\0" * 10)  # bigger
        with pytest.raises(LSC4RecError):
            client.download(manifest, dest)
        assert not dest.exists() or not any(p for p in dest.iterdir() if not p.name.startswith(".")), \
            list(dest.iterdir())  # nothing half-written appears under a real name
        assert not dest.exists() or not list(dest.iterdir())  # and the temp folders are gone too
        # the device's holder keeps its model: v1 is offered as an update to a "v0" device
        good = load_reranker(good_model, vocab_hash=models.VOCAB_HASH)
        old = dataclasses.replace(good.manifest, version="v0")
        good.manifest = old
        holder = ModelHolder(good, tmp_path / "holder")
        result = holder.update_from_cloud(client, dest)
        assert result.status == "rejected" and holder.manifest.version == "v0", result
    finally:
        client.close()
        server.stop(0)


class _FakeModelService(pb_grpc.ModelServiceServicer):
    """A hostile cloud: streams whatever bytes it is given, with their true sha256."""

    def __init__(self, data: bytes):
        self.data = data

    def DownloadModel(self, request, context):
        sha = hashlib.sha256(self.data).hexdigest()
        yield pb.ModelChunk(offset=0, data=self.data, sha256=sha, total_size=len(self.data))


def test_download_refuses_a_version_that_escapes_the_download_folder(good_model, tmp_path):
    data = (good_model / "model.onnx").read_bytes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_ModelServiceServicer_to_server(_FakeModelService(data), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    dest = tmp_path / "a" / "b" / "device"
    manifest = read_manifest(good_model)
    try:
        with CloudClient(ClientConfig(address=f"127.0.0.1:{port}", timeout_s=5), NUM_ITEMS) as client:
            client.download(dataclasses.replace(manifest, version="x"), dest)  # a plain, legitimate version
            escaped = None
            try:
                escaped = client.download(dataclasses.replace(manifest, version="x/../../escaped"), dest)
            except LSC4RecError:
                pass  # refused with a typed error: the wanted behaviour
        outside = [p for p in (tmp_path / "a").rglob("*") if dest not in p.parents and p != dest and p.is_file()]
        assert escaped is None and not outside, f"written outside {dest}: {outside}"
    finally:
        server.stop(0)


# --- no secrets in logs ----------------------------------------------------------------------

def test_no_token_in_server_logs(tmp_path):
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    data = write_dataset(synthetic_dataset(num_users=8, num_items=NUM_ITEMS), tmp_path / "data")
    (tmp_path / "token").write_text(TOKEN + "\n")
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "cloud", "serve", "--popularity", str(data),
                                 "--address", "127.0.0.1:0", "--port-file", str(port_file), "--token-file",
                                 str(tmp_path / "token"), "--log-level", "DEBUG", "--set", "grace_s=0.5"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), log.read_text()[-2000:]
        address = f"127.0.0.1:{int(port_file.read_text())}"
        codes = []
        for token in (TOKEN, TOKEN[:-3] + "bad", ""):
            with CloudClient(ClientConfig(address=address, token=token, timeout_s=5), NUM_ITEMS) as client:
                try:
                    client.get_candidates(CandidateRequest("u", (1, 2), 3))
                    codes.append("OK")
                except CloudError as exc:
                    codes.append(exc.code)
                    assert TOKEN[:12] not in str(exc)
    finally:
        proc.terminate()
        proc.wait(15)
    text = log.read_text()
    print(json.dumps({"figure": "security.logs", "codes": codes, "log_lines": len(text.splitlines()),
                      "token_in_log": TOKEN in text}))
    assert codes == ["OK", "UNAUTHENTICATED", "UNAUTHENTICATED"]
    assert "UNAUTHENTICATED" in text  # the refusals were logged (DEBUG level, every call) ...
    assert TOKEN not in text and TOKEN[:12] not in text and TOKEN[-12:] not in text  # ... without the secret
