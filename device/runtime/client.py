"""Torch-free gRPC client of the cloud: deadlines, retries of UNAVAILABLE (and a shutdown's CANCELLED) by gRPC's retry
policy, verified downloads."""
from __future__ import annotations

import ipaddress
import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import grpc

from shared import wire
from shared.config import check
from shared.errors import ConfigError, InvalidArgumentError, LSC4RecError, ManifestError, UnavailableError
from shared.files import download_verified, staged_dir
from shared.manifest import manifest_from_dict, manifest_to_dict, verify_artifact, write_manifest
from shared.records import CandidateRequest, CandidateResponse, ModelFormat, ModelManifest
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc


MAX_ATTEMPTS = 5  # gRPC clamps a retry policy's maxAttempts to 5
# The unary calls; DownloadModel streams and is not retried (a failed download is checked again later).
RETRIED_METHODS = (("lsc4rec.v1.CandidateService", "GetCandidates"), ("lsc4rec.v1.ModelService", "GetLatestManifest"))


@dataclass(frozen=True)
class ClientConfig:
    """How the device talks to the cloud."""

    # host:port; or several IP addresses, comma-separated (127.0.0.1:50051,10.0.0.2:50051), or dns:///NAME:PORT (every
    # address of the name): gRPC's round_robin spreads the calls over them and its client-side health checking
    # (grpc.health.v1 Watch) skips a server that reports NOT_SERVING, e.g. one draining
    address: str = "127.0.0.1:50051"
    timeout_s: float = 2.0  # total budget of one call, retries included
    download_timeout_s: float = 120.0  # total budget of one artifact download (never retried)
    # gRPC's retry policy (`retry_service_config`): attempts per unary call, only RETRYABLE_CODES are retried, after a
    # pause drawn uniformly from [0, cap]; the cap starts at backoff_initial_s and doubles up to backoff_max_s.
    max_attempts: int = 3
    backoff_initial_s: float = 0.05
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
        channel_target(self.address)  # a bad address list is refused here, naming it
        check(self.download_timeout_s > 0, "download_timeout_s", self.download_timeout_s, "must be > 0")
        check(bool(self.tls_cert_file) == bool(self.tls_key_file), "tls_cert_file", self.tls_cert_file,
              "give tls_cert_file and tls_key_file together")
        check(1 <= self.max_attempts <= MAX_ATTEMPTS, "max_attempts", self.max_attempts,
              f"must be in 1..{MAX_ATTEMPTS} (gRPC's retry policy allows no more)")
        check(0 < self.backoff_initial_s <= self.backoff_max_s, "backoff_initial_s", self.backoff_initial_s,
              "must be in (0, backoff_max_s]")


class CloudError(LSC4RecError):
    """A cloud call failed with a status that retrying will not fix; `code` is the status name."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"cloud call failed: {code}: {message}")


class CloudUnavailableError(UnavailableError):
    """The cloud could not answer in time (UNAVAILABLE after retries, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED).

    The device keeps serving from its cache."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"cloud unavailable: {code}: {message}")


_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


@dataclass
class CallStats:
    """Calls, bytes on the wire (serialized protobuf payloads, once per call) and the final status of each call.

    Retries happen inside gRPC (the channel's retry policy), so a call counts once whatever its attempts."""

    calls: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    last_request_bytes: int = 0
    last_response_bytes: int = 0
    codes: dict[str, int] = field(default_factory=dict)


class CloudClient:
    """One channel to the cloud. Every call has a deadline; only UNAVAILABLE and a shutdown's CANCELLED are retried
    (gRPC's retry policy, RETRYABLE_CODES).

    A `channel` given here is used as it is: build it with `channel_options(config)` to keep the retry policy.
    `num_items`: the largest item id an answer may hold; None (a device) accepts any id >= 1, because the cloud's
    catalogue may have grown past the device model's (the session ranks such items as untrained)."""

    def __init__(self, config: ClientConfig, num_items: int | None = None, channel: grpc.Channel | None = None):
        self.config = config
        self.num_items = num_items
        self._channel = channel or _make_channel(config)
        self._candidates = pb_grpc.CandidateServiceStub(self._channel)
        self._models = pb_grpc.ModelServiceStub(self._channel)
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
            request = dataclasses.replace(request, request_id=uuid.uuid4().hex)
        msg = wire.request_to_pb(request)
        reply = self._call(self._candidates.GetCandidates, msg, request.request_id, timeout_s)
        response = wire.response_from_pb(reply, self.num_items)
        blocked = set(request.history) | set(request.exclude)
        for candidate in response.candidates:
            if candidate.item in blocked:
                raise InvalidArgumentError("candidates.item_id", candidate.item,
                                           "the cloud returned an item of the request's history or exclude list")
        return response

    def latest_manifest(self, fmt: ModelFormat = ModelFormat.ONNX, current_version: str = "",
                        kind: str = "scorer") -> tuple[ModelManifest, bool]:
        """The newest published artifact's manifest of a format and kind, and whether it differs from
        `current_version`."""
        msg = pb.GetLatestManifestRequest(format=wire.format_to_pb(fmt), current_version=current_version, kind=kind)
        reply = self._call(self._models.GetLatestManifest, msg, uuid.uuid4().hex, None)
        return wire.manifest_from_pb(reply.manifest), bool(reply.update_available)

    def download(self, manifest: ModelManifest, dest_folder: str | Path) -> Path:
        """Stream an artifact into `dest_folder/<format>-<version>/` (file + manifest.json), verified.

        Bytes go to a hidden temp folder first; a wrong size or sha256 discards it and raises
        ChecksumError/ManifestError, so a half or corrupt artifact never appears under its name.
        """
        # Re-validate: the version becomes a folder name, so it must be a plain name (no '/' or '..').
        manifest = manifest_from_dict(manifest_to_dict(manifest), source=f"manifest {manifest.version!r}")
        final = Path(dest_folder) / f"{manifest.format.value}-{manifest.version}"
        if final.exists():
            verify_artifact(final)  # already downloaded: trust only after checking again
            return final
        with staged_dir(final) as tmp:
            download_verified(tmp / manifest.file_name, manifest.sha256, lambda out: self._fetch(manifest, out))
            write_manifest(manifest, tmp)
        return final

    def _fetch(self, manifest: ModelManifest, out: BinaryIO) -> None:
        """Write the DownloadModel stream to `out`, checking the announced sha256/size, offsets and length."""
        msg = pb.DownloadModelRequest(version=manifest.version, format=wire.format_to_pb(manifest.format))
        size = 0
        self.stats.calls += 1
        self.stats.request_bytes += msg.ByteSize()
        try:
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
                out.write(chunk.data)
        except grpc.RpcError as exc:
            raise _typed(exc) from None
        if size != manifest.size_bytes:
            raise ManifestError(f"download of {manifest.version}: got {size} bytes, manifest says "
                                f"{manifest.size_bytes}")

    def _metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        meta = (("x-request-id", request_id),)
        if self.config.token:
            meta += (("authorization", f"Bearer {self.config.token}"),)
        return meta

    def _call(self, method, msg, request_id: str, timeout_s: float | None):
        """Unary call with a total deadline (gRPC's retries of UNAVAILABLE included)."""
        size = msg.ByteSize()
        self.stats.calls += 1
        self.stats.request_bytes += size
        self.stats.last_request_bytes, self.stats.last_response_bytes = size, 0
        try:
            reply = method(msg, timeout=self.config.timeout_s if timeout_s is None else timeout_s,
                           metadata=self._metadata(request_id))
        except grpc.RpcError as exc:
            self._count(exc.code())
            raise _typed(exc) from None
        self._count(grpc.StatusCode.OK)
        self.stats.last_response_bytes = reply.ByteSize()
        self.stats.response_bytes += self.stats.last_response_bytes
        return reply

    def _count(self, code: grpc.StatusCode) -> None:
        self.stats.codes[code.name] = self.stats.codes.get(code.name, 0) + 1


def _typed(exc: grpc.RpcError) -> LSC4RecError:
    """A typed error for a failed call: transient ones are UnavailableError (the device uses its cache)."""
    code, details = exc.code(), exc.details() or ""
    if code in _TRANSIENT:
        return CloudUnavailableError(code.name, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError("request", details, "refused by the cloud (INVALID_ARGUMENT)")
    return CloudError(code.name, details)


# UNAVAILABLE: no server, or one that is not ready or draining. CANCELLED: a server shutting down cancels the calls its
# core had received but not yet handed to a handler (grpc/grpc#41785, open in grpcio 1.85) instead of refusing them;
# both unary calls are stateless and idempotent, so another attempt (on another replica) is safe. A deadline, a bad
# argument or a refused token is never retried.
RETRYABLE_CODES = ("UNAVAILABLE", "CANCELLED")


def retry_service_config(config: ClientConfig) -> str:
    """gRPC's service config (JSON): the unary calls retry RETRYABLE_CODES, and nothing else, with jittered backoff.

    Attempt n + 1 follows attempt n after a pause drawn from [0, min(backoff_initial_s * 2^(n-1), backoff_max_s)];
    the call's deadline bounds them all."""
    policy = {"maxAttempts": config.max_attempts, "initialBackoff": f"{config.backoff_initial_s:.9f}s",
              "maxBackoff": f"{config.backoff_max_s:.9f}s", "backoffMultiplier": 2,
              "retryableStatusCodes": list(RETRYABLE_CODES)}
    method = {"name": [{"service": service, "method": name} for service, name in RETRIED_METHODS]}
    if config.max_attempts > 1:  # gRPC refuses a policy of one attempt: no policy is no retry
        method["retryPolicy"] = policy
    service_config: dict = {"methodConfig": [method]}
    if channel_target(config.address)[1]:  # several servers: gRPC balances and health-checks them
        service_config["loadBalancingConfig"] = [{"round_robin": {}}]
        service_config["healthCheckConfig"] = {"serviceName": ""}
    return json.dumps(service_config)


def channel_target(address: str) -> tuple[str, bool]:
    """The gRPC target of `ClientConfig.address` and whether it names several servers (balanced by round_robin).

    `host:port` is one server (pick_first, as before); `dns:///NAME:PORT` is every address of NAME; a comma-separated
    list of IP host:port is gRPC's `ipv4:`/`ipv6:` target. A list of names is refused (gRPC resolves one name per
    channel: give it a dns:/// name holding every address)."""
    address = address.strip()
    if address.startswith("dns:"):
        check(len(address.split(":")) >= 2 and "," not in address, "address", address,
              "a dns: target is one name: dns:///NAME:PORT")
        return address, True
    parts = [part.strip() for part in address.split(",")]
    if len(parts) == 1:
        check(bool(address) and ":" in address, "address", address, "must look like host:port")
        return address, False
    families = set()
    for part in parts:
        host, _, port = part.rpartition(":")
        check(bool(host) and port.isdigit(), "address", address, f"{part!r} is not IP:port")
        try:
            families.add("ipv6" if host.startswith("[") else "ipv4")
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError("address", address, f"{host!r} is not an IP address: several addresses must be IP "
                                                  "literals; for a name use dns:///NAME:PORT") from None
    check(len(families) == 1, "address", address, "several addresses must all be IPv4 or all IPv6")
    return f"{families.pop()}:{','.join(parts)}", True


def channel_options(config: ClientConfig) -> list[tuple[str, object]]:
    """The channel arguments of `config`: message limits, the retry policy, reconnect back-off, keepalive, TLS name."""
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.enable_retries", 1),
               ("grpc.service_config", retry_service_config(config)),
               ("grpc.service_config_disable_resolution", 1),  # ours, never one from DNS
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
    return options


def _make_channel(config: ClientConfig) -> grpc.Channel:
    options = channel_options(config)
    target = channel_target(config.address)[0]
    if not config.tls_ca_file:
        return grpc.insecure_channel(target, options=options)
    identity = {}
    if config.tls_cert_file:
        identity = {"certificate_chain": Path(config.tls_cert_file).read_bytes(),
                    "private_key": Path(config.tls_key_file).read_bytes()}
    creds = grpc.ssl_channel_credentials(root_certificates=Path(config.tls_ca_file).read_bytes(), **identity)
    return grpc.secure_channel(target, creds, options=options)
