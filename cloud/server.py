"""The cloud gRPC server: CandidateService + ModelService + health + reflection, with limits and auth."""
from __future__ import annotations

import dataclasses
import hmac
import logging
import math
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import wire
from shared.config import check
from shared.errors import ConfigError, InvalidArgumentError, UnavailableError
from shared.generator import CandidateGenerator
from shared.records import CandidateResponse
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

from cloud.batcher import BatcherConfig, MicroBatcher
from cloud.errors import (REQUEST_ID_KEY, AuthError, CallLog, OverloadedError, rpc_boundary, status_for,
                          stream_boundary)
from cloud.metrics import ServerMetrics
from cloud.registry import ModelRegistry

log = logging.getLogger("lsc4rec.cloud")
SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
HEALTH_EXEMPT = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class ServerConfig:
    """Limits and sizes of the cloud server (configs/cloud/*.toml)."""

    address: str = "127.0.0.1:50051"  # host:port to bind; port 0 picks a free one
    max_in_flight: int = 256  # GetCandidates calls served at once; more are shed with RESOURCE_EXHAUSTED
    max_history: int = 1024  # longest accepted history (items); longer is INVALID_ARGUMENT
    max_candidates: int = 200  # largest num_candidates accepted
    max_receive_bytes: int = 1 << 20  # largest request message; bigger is refused by gRPC (RESOURCE_EXHAUSTED)
    max_send_bytes: int = 4 << 20  # largest response message
    chunk_bytes: int = 64 << 10  # DownloadModel chunk size
    workers: int = 0  # RPC threads; 0 = max_in_flight + 16 (room for health and model calls)
    grace_s: float = 10.0  # on shutdown, how long in-flight calls may take to finish
    max_call_s: float = 60.0  # deadline given to calls that carry none (or a longer one)
    generator_threads: int = 0  # torch intra-op threads of the LLM generator; 0 = torch's default
    batch: BatcherConfig = field(default_factory=BatcherConfig)

    def __post_init__(self):
        check(self.max_in_flight >= 1, "max_in_flight", self.max_in_flight, "must be >= 1")
        check(self.max_history >= 1, "max_history", self.max_history, "must be >= 1")
        check(self.max_candidates >= 1, "max_candidates", self.max_candidates, "must be >= 1")
        check(1024 <= self.max_receive_bytes <= 64 << 20, "max_receive_bytes", self.max_receive_bytes,
              "must be in 1 KiB..64 MiB")
        check(1024 <= self.max_send_bytes <= 64 << 20, "max_send_bytes", self.max_send_bytes,
              "must be in 1 KiB..64 MiB")
        check(1024 <= self.chunk_bytes <= self.max_send_bytes // 2, "chunk_bytes", self.chunk_bytes,
              "must be in 1 KiB..max_send_bytes/2")
        check(self.workers >= 0, "workers", self.workers, "must be >= 0")
        check(self.generator_threads >= 0, "generator_threads", self.generator_threads, "must be >= 0")
        check(self.grace_s >= 0, "grace_s", self.grace_s, "must be >= 0")
        check(0 < self.max_call_s <= 3600, "max_call_s", self.max_call_s, "must be in (0, 3600]")
        check(":" in self.address, "address", self.address, "must look like host:port")

    @property
    def threads(self) -> int:
        return self.workers or self.max_in_flight + 16


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """GetCandidates: validate -> micro-batcher -> response. Refuses work while not ready or over the limit."""

    def __init__(self, config: ServerConfig, observer: ServerMetrics):
        self.config = config
        self.observer = observer
        self._lock = threading.Lock()
        self._in_flight = 0
        self.generator: CandidateGenerator | None = None
        self.batcher: MicroBatcher | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @rpc_boundary("GetCandidates")
    def GetCandidates(self, request: pb.GetCandidatesRequest, context, rid: str) -> pb.GetCandidatesResponse:
        with self._lock:
            if self._in_flight >= self.config.max_in_flight:
                raise OverloadedError(f"in-flight limit {self.config.max_in_flight} reached; retry later")
            self._in_flight += 1
        try:
            return self._serve(request, context, rid)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve(self, request, context, rid: str) -> pb.GetCandidatesResponse:
        generator, batcher = self.generator, self.batcher
        if generator is None or batcher is None:
            raise UnavailableError("the generator is not loaded yet")
        req = wire.request_from_pb(request, generator.num_items, self.config.max_history,
                                   self.config.max_candidates)
        if req.request_id != rid:
            req = dataclasses.replace(req, request_id=rid)  # the batcher's log lines carry it too
        remaining = context.time_remaining()  # no client deadline reads as ~infinite
        deadline = time.monotonic() + min(remaining if remaining is not None else math.inf, self.config.max_call_s)
        start = time.perf_counter()
        candidates = batcher.generate(req, deadline)
        ms = (time.perf_counter() - start) * 1000.0
        if log.isEnabledFor(logging.DEBUG):
            CallLog(log, {"request_id": rid}).debug("user %s: %d candidates in %.1f ms", req.user_id,
                                                   len(candidates), ms)
        return wire.response_to_pb(CandidateResponse(tuple(candidates), generator.version, ms, rid))


class ModelServicer(pb_grpc.ModelServiceServicer):
    """Newest verified device artifact per format, and its bytes in chunks."""

    def __init__(self, config: ServerConfig, registry: ModelRegistry, observer: ServerMetrics):
        self.config = config
        self.registry = registry
        self.observer = observer

    @rpc_boundary("GetLatestManifest")
    def GetLatestManifest(self, request: pb.GetLatestManifestRequest, context, rid: str):
        published = self.registry.latest(wire.format_from_pb(request.format))
        version = published.manifest.version
        return pb.GetLatestManifestResponse(manifest=wire.manifest_to_pb(published.manifest),
                                            update_available=version != request.current_version)

    @stream_boundary("DownloadModel")
    def DownloadModel(self, request: pb.DownloadModelRequest, context, rid: str) -> Iterator[pb.ModelChunk]:
        if not request.version:
            raise InvalidArgumentError("version", request.version, "must not be empty")
        published = self.registry.find(request.version, wire.format_from_pb(request.format))
        manifest = published.manifest
        with open(published.path, "rb") as handle:
            offset = 0
            while data := handle.read(self.config.chunk_bytes):
                first = offset == 0
                yield pb.ModelChunk(offset=offset, data=data, sha256=manifest.sha256 if first else "",
                                    total_size=manifest.size_bytes if first else 0)
                offset += len(data)


class TokenInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except health checks."""

    def __init__(self, token: str, observer: ServerMetrics):
        self._expected = f"Bearer {token}".encode()
        self._observer = observer

    def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_EXEMPT):
            return continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        rid = str(metadata.get(REQUEST_ID_KEY, "-"))
        method = details.method.rsplit("/", 1)[-1]
        code, message = status_for(AuthError(f"bearer token {'wrong' if given else 'missing'}"))
        CallLog(log, {"request_id": rid}).info("%s -> %s: %s", method, code.name, message)
        self._observer.record(method, code, 0.0)

        def deny(request, context):
            context.abort(code, f"{message} (request_id={rid})")

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class CloudServer:
    """A started grpc server plus its health, metrics and generator slot."""

    def __init__(self, config: ServerConfig, models_dir: str | Path | None, address: str,
                 token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                 tls_client_ca: bytes | None = None):
        self.config = config
        self.metrics = ServerMetrics()
        self.registry = ModelRegistry(models_dir)
        self.candidates = CandidateServicer(config, self.metrics)
        self.models = ModelServicer(config, self.registry, self.metrics)
        self.health = health.HealthServicer()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._batches = 0
        interceptors = [TokenInterceptor(token, self.metrics)] if token else []
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="rpc"),
            interceptors=interceptors, maximum_concurrent_rpcs=config.threads,
            options=[("grpc.max_receive_message_length", config.max_receive_bytes),
                     ("grpc.max_send_message_length", config.max_send_bytes),
                     ("grpc.so_reuseport", 0),
                     # Devices send keepalive pings (device.client) to notice dead links; accept them.
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                     ("grpc.http2.max_ping_strikes", 0)])
        pb_grpc.add_CandidateServiceServicer_to_server(self.candidates, self.grpc)
        pb_grpc.add_ModelServiceServicer_to_server(self.models, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        self.port = self._bind(address, tls, tls_client_ca)
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"
        self.metrics.bind(self._queue_depth, lambda: self.candidates.in_flight)
        self.draining = False

    def _bind(self, address: str, tls: tuple[bytes, bytes] | None, client_ca: bytes | None) -> int:
        try:
            if tls is None:
                port = self.grpc.add_insecure_port(address)
            else:
                # With a client CA, mutual TLS: a client must present a certificate signed by it.
                creds = grpc.ssl_server_credentials([tls], root_certificates=client_ca,
                                                    require_client_auth=client_ca is not None)
                port = self.grpc.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise ConfigError("address", address, f"cannot bind: {exc}") from None
        if not port:
            raise ConfigError("address", address, "cannot bind")
        return port

    def _queue_depth(self) -> int:
        batcher = self.candidates.batcher
        return batcher.queue_depth if batcher is not None else 0

    def _set_health(self, status) -> None:
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, status)

    def start(self) -> "CloudServer":
        self.grpc.start()
        log.info("listening on %s (models: %s)", self.address, self.registry.versions() or "none")
        return self

    def set_generator(self, generator: CandidateGenerator) -> None:
        """Warm the generator up, start the micro-batcher, then report SERVING."""
        _warm_up(generator)
        batcher = MicroBatcher(generator, self.config.batch, on_batch=self.metrics.observe_batch).start()
        self.candidates.generator, self.candidates.batcher = generator, batcher
        if not self.draining:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("generator %s ready (%d items, batch <= %d, wait <= %.1f ms); models %s; serving on %s",
                 generator.version, generator.num_items, self.config.batch.max_batch_size,
                 self.config.batch.max_wait_ms, self.registry.versions() or "none", self.address)

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        self.draining = True
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace is None else grace
        log.info("draining (grace %.1f s, %d in flight)", grace, self.candidates.in_flight)
        self.grpc.stop(grace).wait()
        if self.candidates.batcher is not None:
            self.candidates.batcher.stop()
        self.metrics.close()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self.grpc.wait_for_termination(timeout)


def _warm_up(generator: CandidateGenerator) -> None:
    """One real call so the first device does not pay for lazy initialisation."""
    if generator.num_items < 1:
        raise UnavailableError(f"generator {generator.version} has an empty catalogue")
    history = [1] if generator.num_items > 1 else []
    generator.generate([history], min(10, generator.num_items - len(history)), [[]])


def create_server(config: ServerConfig, generator: CandidateGenerator | None = None,
                  models_dir: str | Path | None = None, *, address: str | None = None,
                  token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                  tls_client_ca: bytes | None = None, metrics_port: int | None = None) -> tuple[CloudServer, int]:
    """Build and start the server; returns it and its bound port (address port 0 picks a free one).

    Without a generator it answers UNAVAILABLE (health NOT_SERVING) until `set_generator` is called.
    `tls` is (private key PEM, certificate chain PEM); `tls_client_ca` (PEM) turns on mutual TLS.
    `metrics_port` exposes /metrics on 127.0.0.1.
    """
    if tls_client_ca is not None and tls is None:
        raise ConfigError("tls_client_ca", "<pem>", "mutual TLS needs the server's own key and certificate")
    server = CloudServer(config, models_dir, address or config.address, token=token, tls=tls,
                         tls_client_ca=tls_client_ca)
    if metrics_port is not None:
        server.metrics_port = server.metrics.serve(metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", server.metrics_port)
    server.start()
    if generator is not None:
        server.set_generator(generator)
    return server, server.port
