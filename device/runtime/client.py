"""Torch-free gRPC client of the cloud: deadlines, bounded jittered retries on UNAVAILABLE, verified downloads."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from shared import wire
from shared.config import check
from shared.errors import ChecksumError, InvalidArgumentError, LSC4RecError, ManifestError, UnavailableError
from shared.manifest import manifest_from_dict, manifest_to_dict, verify_artifact, write_manifest
from shared.records import CandidateRequest, CandidateResponse, ModelFormat, ModelManifest
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ClientConfig:
    """How the device talks to the cloud."""

    address: str = "127.0.0.1:50051"
    timeout_s: float = 2.0  # total budget of one call, retries included
    download_timeout_s: float = 120.0  # total budget of one artifact download
    max_attempts: int = 3  # attempts per call (only UNAVAILABLE is retried)
    backoff_initial_s: float = 0.05  # first backoff cap; doubles each attempt (full jitter)
    backoff_max_s: float = 1.0
    max_message_bytes: int = 4 << 20
    token: str = ""  # bearer token ("" = none)
    tls_ca_file: str = ""  # PEM root certificate; "" = plaintext
    tls_cert_file: str = ""  # PEM client certificate, for servers that demand mutual TLS
    tls_key_file: str = ""  # PEM private key of tls_cert_file
    tls_server_name: str = ""  # override of the TLS target name (tests with a self-signed cert)
    # gRPC's default reconnect backoff grows to 120 s, so a device would stay away long after the cloud is
    # back; cap it so recovery after an outage takes about a second.
    reconnect_backoff_max_ms: int = 1000
    # Keepalive pings detect a dead (black-holed) connection; 0 disables them.
    keepalive_ms: int = 10_000
    keepalive_timeout_ms: int = 2_000

    def __post_init__(self):
        check(self.timeout_s > 0, "timeout_s", self.timeout_s, "must be > 0")
        check(self.download_timeout_s > 0, "download_timeout_s", self.download_timeout_s, "must be > 0")
        check(bool(self.tls_cert_file) == bool(self.tls_key_file), "tls_cert_file", self.tls_cert_file,
              "give tls_cert_file and tls_key_file together")
        check(1 <= self.max_attempts <= 10, "max_attempts", self.max_attempts, "must be in 1..10")
        check(0 <= self.backoff_initial_s <= self.backoff_max_s, "backoff_initial_s", self.backoff_initial_s,
              "must be in 0..backoff_max_s")


class CloudError(LSC4RecError):
    """A cloud call failed with a status that retrying will not fix; `code` is the status name."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"cloud call failed: {code}: {message}")


class CloudUnavailableError(UnavailableError):
    """The cloud could not answer in time (UNAVAILABLE after retries, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED).

    The device keeps serving from its cache."""

    def __init__(self, code: str, message: str, attempts: int):
        self.code, self.attempts = code, attempts
        super().__init__(f"cloud unavailable after {attempts} attempt(s): {code}: {message}")


_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class CallStats:
    """Bytes on the wire (serialized protobuf payloads) and attempts, for reports."""

    calls: int = 0
    attempts: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    last_request_bytes: int = 0
    last_response_bytes: int = 0
    codes: dict[str, int] = field(default_factory=dict)


class CloudClient:
    """One channel to the cloud. Every call has a deadline; only UNAVAILABLE is retried."""

    def __init__(self, config: ClientConfig, num_items: int, channel: grpc.Channel | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.config = config
        self.num_items = num_items
        self._channel = channel or _make_channel(config)
        self._candidates = pb_grpc.CandidateServiceStub(self._channel)
        self._models = pb_grpc.ModelServiceStub(self._channel)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.stats = CallStats()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_candidates(self, request: CandidateRequest, timeout_s: float | None = None) -> CandidateResponse:
        """Ask for a fresh candidate list; the answer is validated against the catalogue."""
        if not request.request_id:
            request = CandidateRequest(request.user_id, request.history, request.num_candidates,
                                       request.exclude, uuid.uuid4().hex, request.device_model_version)
        msg = wire.request_to_pb(request)
        reply = self._call(self._candidates.GetCandidates, msg, request.request_id, timeout_s)
        response = wire.response_from_pb(reply, self.num_items)
        blocked = set(request.history) | set(request.exclude)
        for candidate in response.candidates:
            if candidate.item in blocked:
                raise InvalidArgumentError("candidates.item_id", candidate.item,
                                           "the cloud returned an item of the request's history or exclude list")
        return response

    def latest_manifest(self, fmt: ModelFormat = ModelFormat.ONNX,
                        current_version: str = "") -> tuple[ModelManifest, bool]:
        """The newest published artifact's manifest and whether it differs from `current_version`."""
        msg = pb.GetLatestManifestRequest(format=wire.format_to_pb(fmt), current_version=current_version)
        reply = self._call(self._models.GetLatestManifest, msg, uuid.uuid4().hex, None)
        return wire.manifest_from_pb(reply.manifest), bool(reply.update_available)

    def download(self, manifest: ModelManifest, dest_folder: str | Path) -> Path:
        """Stream an artifact into `dest_folder/<format>-<version>/` (file + manifest.json), verified.

        Bytes go to a hidden temp folder first; a wrong size or sha256 discards it and raises
        ChecksumError/ManifestError, so a half or corrupt artifact never appears under its name.
        """
        # Re-validate: the version becomes a folder name, so it must be a plain name (no '/' or '..').
        manifest = manifest_from_dict(manifest_to_dict(manifest), source=f"manifest {manifest.version!r}")
        dest_folder = Path(dest_folder)
        final = dest_folder / f"{manifest.format.value}-{manifest.version}"
        if final.exists():
            verify_artifact(final)  # already downloaded: trust only after checking again
            return final
        dest_folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest_folder))
        try:
            self._fetch(manifest, tmp / manifest.file_name)
            write_manifest(manifest, tmp)
            verify_artifact(tmp, manifest)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _fetch(self, manifest: ModelManifest, path: Path) -> None:
        msg = pb.DownloadModelRequest(version=manifest.version, format=wire.format_to_pb(manifest.format))
        digest, size = hashlib.sha256(), 0
        self.stats.calls += 1
        self.stats.attempts += 1
        self.stats.request_bytes += msg.ByteSize()
        try:
            with open(path, "wb") as handle:
                for n, chunk in enumerate(self._models.DownloadModel(
                        msg, timeout=self.config.download_timeout_s, metadata=self._metadata(uuid.uuid4().hex))):
                    self.stats.response_bytes += chunk.ByteSize()
                    if n == 0 and (chunk.sha256 != manifest.sha256 or chunk.total_size != manifest.size_bytes):
                        raise ManifestError(f"download of {manifest.version}: server announces sha256 "
                                            f"{chunk.sha256} / {chunk.total_size} bytes, manifest says "
                                            f"{manifest.sha256} / {manifest.size_bytes}")
                    if chunk.offset != size:
                        raise ManifestError(f"download of {manifest.version}: chunk at offset {chunk.offset}, "
                                            f"expected {size}")
                    size += len(chunk.data)
                    if size > manifest.size_bytes:
                        raise ManifestError(f"download of {manifest.version}: more than the "
                                            f"{manifest.size_bytes} bytes of the manifest")
                    digest.update(chunk.data)
                    handle.write(chunk.data)
        except grpc.RpcError as exc:
            raise _typed(exc, 1) from None
        if size != manifest.size_bytes:
            raise ManifestError(f"download of {manifest.version}: got {size} bytes, manifest says "
                                f"{manifest.size_bytes}")
        if digest.hexdigest() != manifest.sha256:
            raise ChecksumError(path, manifest.sha256, digest.hexdigest())

    def _metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        meta = (("x-request-id", request_id),)
        if self.config.token:
            meta += (("authorization", f"Bearer {self.config.token}"),)
        return meta

    def _call(self, method, msg, request_id: str, timeout_s: float | None):
        """Unary call with a total deadline; UNAVAILABLE retried with full-jitter backoff, bounded."""
        budget = self.config.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        size = msg.ByteSize()
        self.stats.calls += 1
        self.stats.last_request_bytes, self.stats.last_response_bytes = size, 0
        for attempt in range(1, self.config.max_attempts + 1):
            remaining = deadline - time.monotonic()
            self.stats.attempts += 1
            self.stats.request_bytes += size
            try:
                reply = method(msg, timeout=max(remaining, 0.001), metadata=self._metadata(request_id))
            except grpc.RpcError as exc:
                code = exc.code()
                self._count(code)
                pause = self._backoff(attempt)
                last = attempt == self.config.max_attempts or deadline - time.monotonic() <= pause
                if code != grpc.StatusCode.UNAVAILABLE or last:
                    raise _typed(exc, attempt) from None
                self._sleep(pause)
                continue
            self._count(grpc.StatusCode.OK)
            self.stats.last_response_bytes = reply.ByteSize()
            self.stats.response_bytes += self.stats.last_response_bytes
            return reply
        raise AssertionError("unreachable: the loop returns or raises")

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    def _count(self, code: grpc.StatusCode) -> None:
        self.stats.codes[code.name] = self.stats.codes.get(code.name, 0) + 1


def _typed(exc: grpc.RpcError, attempts: int) -> LSC4RecError:
    """A typed error for a failed call: transient ones are UnavailableError (the device uses its cache)."""
    code, details = exc.code(), exc.details() or ""
    if code in _TRANSIENT:
        return CloudUnavailableError(code.name, details, attempts)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError("request", details, "refused by the cloud (INVALID_ARGUMENT)")
    return CloudError(code.name, details)


def _make_channel(config: ClientConfig) -> grpc.Channel:
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.initial_reconnect_backoff_ms", min(200, config.reconnect_backoff_max_ms)),
               ("grpc.min_reconnect_backoff_ms", min(200, config.reconnect_backoff_max_ms)),
               ("grpc.max_reconnect_backoff_ms", config.reconnect_backoff_max_ms)]
    if config.keepalive_ms:
        options += [("grpc.keepalive_time_ms", config.keepalive_ms),
                    ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
                    ("grpc.http2.ping_timeout_ms", config.keepalive_timeout_ms),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.max_pings_without_data", 0)]
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    if not config.tls_ca_file:
        return grpc.insecure_channel(config.address, options=options)
    identity = {}
    if config.tls_cert_file:
        identity = {"certificate_chain": Path(config.tls_cert_file).read_bytes(),
                    "private_key": Path(config.tls_key_file).read_bytes()}
    creds = grpc.ssl_channel_credentials(root_certificates=Path(config.tls_ca_file).read_bytes(), **identity)
    return grpc.secure_channel(config.address, creds, options=options)
