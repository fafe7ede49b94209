"""The cloud gRPC server (grpc.aio): CandidateService + ModelService + health + reflection, with limits and auth.

All RPCs run as coroutines on one event loop in a dedicated thread, so the public API stays synchronous
(`create_server`, `CloudServer.stop` ...). Only the generator runs elsewhere: in the micro-batcher's thread.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared import wire
from shared.config import check
from shared.data.catalog import CatalogRef
from shared.errors import ConfigError, InvalidArgumentError, UnavailableError
from shared.generator import CandidateGenerator
from shared.records import CandidateResponse
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

from cloud.batcher import BatcherConfig, MicroBatcher
from cloud.errors import (REQUEST_ID_KEY, AuthError, CallLog, OverloadedError, lenient_parser, rpc_boundary,
                          status_for, stream_boundary)
from cloud.metrics import ServerMetrics
from cloud.registry import ModelRegistry
from cloud.vectors import VectorTables
from cloud.replicas import ReplicaConfig

log = logging.getLogger("lsc4rec.cloud")
SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
HEALTH_EXEMPT = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class ServerConfig:
    """Limits and sizes of the cloud server (cloud/presets/*.toml)."""

    address: str = "127.0.0.1:50051"  # host:port to bind; port 0 picks a free one
    max_in_flight: int = 256  # GetCandidates calls served at once; more are shed with RESOURCE_EXHAUSTED
    max_history: int = 1024  # longest accepted history (items); longer is INVALID_ARGUMENT
    max_candidates: int = 200  # largest num_candidates accepted
    max_receive_bytes: int = 1 << 20  # largest request message; bigger is refused by gRPC (RESOURCE_EXHAUSTED)
    max_send_bytes: int = 4 << 20  # largest response message
    chunk_bytes: int = 64 << 10  # DownloadModel chunk size
    workers: int = 0  # RPCs of any kind served at once (gRPC's own limit); 0 = max_in_flight + 16
    grace_s: float = 10.0  # on shutdown, how long in-flight calls may take to finish
    # on shutdown, how long to keep serving after health turns NOT_SERVING, before the listener closes: clients that
    # balance over several addresses with health checking (device.runtime.client) move away first; 0 = close at once
    drain_s: float = 0.0
    max_call_s: float = 60.0  # deadline given to calls that carry none (or a longer one)
    generator_threads: int = 0  # torch intra-op threads of the LLM generator; 0 = torch's default
    # `serve --generators DIR`: seconds between scans of DIR for a newly published generator version (loaded and
    # warmed up off the serving path, then switched to); 0 = only the version found at start
    generator_poll_s: float = 5.0
    batch: BatcherConfig = field(default_factory=BatcherConfig)
    replicas: ReplicaConfig = field(default_factory=ReplicaConfig)  # `serve --replicas N`: the supervising parent

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
        check(self.generator_poll_s >= 0, "generator_poll_s", self.generator_poll_s, "must be >= 0")
        check(self.grace_s >= 0, "grace_s", self.grace_s, "must be >= 0")
        check(0 <= self.drain_s <= 300, "drain_s", self.drain_s, "must be in [0, 300]")
        check(0 < self.max_call_s <= 3600, "max_call_s", self.max_call_s, "must be in (0, 3600]")
        check(":" in self.address, "address", self.address, "must look like host:port")

    @property
    def threads(self) -> int:
        """gRPC's limit on concurrent RPCs of all kinds: room for health and model calls beside max_in_flight."""
        return self.workers or self.max_in_flight + 16


class CandidateServicer(pb_grpc.CandidateServiceServicer):
    """GetCandidates: validate -> micro-batcher -> response. Refuses work while not ready or over the limit.

    Runs on the server's event loop only, so the in-flight count needs no lock and a call over the
    limit is shed at once, before anything else is done for it.
    """

    def __init__(self, config: ServerConfig, observer: ServerMetrics):
        self.config = config
        self.observer = observer
        self._in_flight = 0
        self.generator: CandidateGenerator | None = None
        self.batcher: MicroBatcher | None = None
        self.vector_tables: VectorTables | None = None  # item vectors for catalogue-free devices (set by CloudServer)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @rpc_boundary("GetCandidates")
    async def GetCandidates(self, request: pb.GetCandidatesRequest, context, rid: str) -> pb.GetCandidatesResponse:
        if self._in_flight >= self.config.max_in_flight:
            raise OverloadedError(f"in-flight limit {self.config.max_in_flight} reached; retry later")
        self._in_flight += 1
        try:
            return await self._serve(request, context, rid)
        finally:
            self._in_flight -= 1

    async def _serve(self, request, context, rid: str) -> pb.GetCandidatesResponse:
        # One read of the pair: a generator swapped in meanwhile (a grown catalogue) answers the next request; this
        # one is checked against, queued to and answered by the same generator (no await until it is queued).
        generator, batcher = self.generator, self.batcher
        if generator is None or batcher is None:
            raise UnavailableError("the generator is not loaded yet")
        req = wire.request_from_pb(request, generator.num_items, self.config.max_history,
                                   self.config.max_candidates)
        if req.request_id != rid:
            req = dataclasses.replace(req, request_id=rid)  # the batcher's log lines carry it too
        table = None
        if req.with_vectors:  # checked before generating: a version with no table is refused at once
            if self.vector_tables is None:
                raise InvalidArgumentError("with_vectors", True, "this server publishes no item vectors")
            table = self.vector_tables.cached(req.device_model_version)
            if table is None:
                table = await asyncio.to_thread(self.vector_tables.load, req.device_model_version)
        remaining = context.time_remaining()  # None: the client set no deadline
        deadline = time.monotonic() + min(remaining if remaining is not None else math.inf, self.config.max_call_s)
        start = time.perf_counter()
        candidates = await batcher.generate_async(req, deadline)
        ms = (time.perf_counter() - start) * 1000.0
        if log.isEnabledFor(logging.DEBUG):
            CallLog(log, {"request_id": rid}).debug("user %s: %d candidates in %.1f ms", req.user_id,
                                                   len(candidates), ms)
        vectors = None
        if table is not None:  # each candidate's row and each missing history item's
            vectors = table.lookup([c.item for c in candidates] + list(req.missing_vectors))
        return wire.response_to_pb(CandidateResponse(tuple(candidates), generator.version, ms, rid, vectors))


class ModelServicer(pb_grpc.ModelServiceServicer):
    """Newest verified device artifact per format, and its bytes in chunks (disk work off the event loop)."""

    def __init__(self, config: ServerConfig, registry: ModelRegistry, observer: ServerMetrics):
        self.config = config
        self.registry = registry
        self.observer = observer

    @rpc_boundary("GetLatestManifest")
    async def GetLatestManifest(self, request: pb.GetLatestManifestRequest, context, rid: str):
        # A new folder is verified (sha256 of the whole file) on first sight: not on the loop.
        published = await asyncio.to_thread(self.registry.latest, wire.format_from_pb(request.format), request.kind)
        version = published.manifest.version
        return pb.GetLatestManifestResponse(manifest=wire.manifest_to_pb(published.manifest),
                                            update_available=version != request.current_version)

    @stream_boundary("DownloadModel")
    async def DownloadModel(self, request: pb.DownloadModelRequest, context, rid: str) -> AsyncIterator[pb.ModelChunk]:
        if not request.version:
            raise InvalidArgumentError("version", request.version, "must not be empty")
        published = await asyncio.to_thread(self.registry.find, request.version, wire.format_from_pb(request.format))
        manifest = published.manifest
        with open(published.path, "rb") as handle:
            offset = 0
            while data := await asyncio.to_thread(handle.read, self.config.chunk_bytes):
                first = offset == 0
                yield pb.ModelChunk(offset=offset, data=data, sha256=manifest.sha256 if first else "",
                                    total_size=manifest.size_bytes if first else 0)
                offset += len(data)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except health checks."""

    def __init__(self, token: str, observer: ServerMetrics):
        self._expected = f"Bearer {token}".encode()
        self._observer = observer

    async def intercept_service(self, continuation, details):
        if details.method.startswith(HEALTH_EXEMPT):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        rid = str(metadata.get(REQUEST_ID_KEY, "-"))
        method = details.method.rsplit("/", 1)[-1]
        code, message = status_for(AuthError(f"bearer token {'wrong' if given else 'missing'}"))
        CallLog(log, {"request_id": rid}).info("%s -> %s: %s", method, code.name, message)
        self._observer.record(method, code, 0.0)

        async def deny(request, context):
            await context.abort(code, f"{message} (request_id={rid})")

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def _add_service(server: grpc.aio.Server, name: str, servicer) -> None:
    """Register a service of lsc4rec.proto like the generated add_*_to_server, but with lenient request parsing
    (so malformed bytes reach the boundary, which answers INVALID_ARGUMENT with a request id)."""
    service = pb.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in service.methods:
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=lenient_parser(getattr(pb, method.input_type.name)),
                                     response_serializer=getattr(pb, method.output_type.name).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running in its own daemon thread; synchronous code hands it coroutines."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel what is left on the loop, stop it and join its thread."""
        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self.loop.shutdown_default_executor()  # the threads of asyncio.to_thread

        if self.loop.is_running():
            self.run(cancel_rest(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class _Health(health.aio.HealthServicer):
    """gRPC's health servicer whose Watch streams end when the server drains (after NOT_SERVING was sent).

    gRPC's client-side health checking (device.runtime.client with several addresses) keeps one Watch open per
    connection; an open stream is an in-flight call, which would hold every drain to its full grace period."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[asyncio.Task] = set()
        self._ending = False

    async def Watch(self, request, context) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        self._watches.add(watch)
        try:
            await watch
        except asyncio.CancelledError:
            if not self._ending:
                raise
        finally:
            self._watches.discard(watch)

    async def end_watches(self) -> None:
        """End the open Watch streams (status OK; a health-checking client reconnects or moves away)."""
        self._ending = True
        await asyncio.sleep(0.05)  # let the NOT_SERVING updates go out first
        for watch in list(self._watches):
            watch.cancel()


class CloudServer:
    """A started grpc.aio server (its event loop in a thread of its own) plus its health, metrics and generator slot."""

    def __init__(self, config: ServerConfig, models_dir: str | Path | None, address: str,
                 token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                 tls_client_ca: bytes | None = None, reuse_port: bool = False, hold_serving: bool = False):
        self.config = config
        self.reuse_port = reuse_port  # several processes (cloud.replicas) listen on one port: SO_REUSEPORT
        # cloud.replicas: health stays NOT_SERVING after the generator is ready until `release()` (every replica ready)
        self._held = hold_serving
        self.ready = threading.Event()  # set once a generator is warmed up and swapped in
        self.metrics = ServerMetrics()
        self.registry = ModelRegistry(models_dir)
        self.candidates = CandidateServicer(config, self.metrics)
        self.models = ModelServicer(config, self.registry, self.metrics)
        self.candidates.vector_tables = VectorTables(self.registry)
        self.draining = False
        self.catalog: CatalogRef | None = None  # the served generator's catalogue, when its source knows it
        self._on_stop: list[Callable[[], None]] = []
        self._stopping, self._stop_lock, self._stopped = False, threading.Lock(), threading.Event()
        self._loop = _LoopThread("grpc-aio")
        try:
            self.port = self._loop.run(self._build(address, token, tls, tls_client_ca))
        except BaseException:
            self._loop.close()
            raise
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"
        self.metrics.bind(self._queue_depth, lambda: self.candidates.in_flight)

    async def _build(self, address: str, token: str | None, tls: tuple[bytes, bytes] | None,
                     client_ca: bytes | None) -> int:
        """On the loop: the aio server and its services (grpc.aio objects belong to the loop that made them)."""
        self.health = _Health()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        interceptors = [TokenInterceptor(token, self.metrics)] if token else []
        self.grpc = grpc.aio.server(
            interceptors=interceptors, maximum_concurrent_rpcs=self.config.threads,
            options=[("grpc.max_receive_message_length", self.config.max_receive_bytes),
                     ("grpc.max_send_message_length", self.config.max_send_bytes),
                     ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                     # Devices send keepalive pings (device.runtime.client) to notice dead links; accept them.
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                     ("grpc.http2.max_ping_strikes", 0)])
        _add_service(self.grpc, "CandidateService", self.candidates)
        _add_service(self.grpc, "ModelService", self.models)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        return self._bind(address, tls, client_ca)

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

    async def _set_health(self, status) -> None:
        for name in ("",) + SERVICE_NAMES:
            await self.health.set(name, status)

    def start(self) -> "CloudServer":
        self._loop.run(self.grpc.start())
        log.info("listening on %s (models: %s)", self.address, self.registry.versions() or "none")
        return self

    @property
    def generator_version(self) -> str:
        """The served generator's version ("" before one is set); every response carries it too."""
        generator = self.candidates.generator
        return "" if generator is None else generator.version

    def set_generator(self, generator: CandidateGenerator, catalog: CatalogRef | None = None) -> None:
        """Warm the generator up, start its micro-batcher, swap both in, then report SERVING.

        Also a hot swap while serving (`cloud.generator_versions.GeneratorWatcher`): the warm-up runs in the
        caller's thread, off the serving path; the swap runs on the event loop, so a request is validated and
        queued against the old pair or the new one, never a mix (its item ids are checked against the catalogue of
        the generator that answers it). The old batcher answers what it already queued, then stops.
        `catalog`: the catalogue the generator serves, kept for the record (`self.catalog`).
        """
        _warm_up(generator)
        batcher = MicroBatcher(generator, self.config.batch, on_batch=self.metrics.observe_batch).start()
        with self._stop_lock:
            if self._stopping:  # the loop is closing: nothing to swap into
                batcher.stop()
                raise UnavailableError("the server is stopping; generator not swapped in")
            old = self._loop.run(self._swap(generator, batcher, catalog))
            if not self._held:
                self._loop.run(self._set_health(health_pb2.HealthCheckResponse.SERVING))
        self.ready.set()
        self.metrics.set_generator(generator.version, generator.num_items)
        if old is None:
            log.info("generator %s ready (%d items, batch <= %d, wait <= %.1f ms); models %s; serving on %s",
                     generator.version, generator.num_items, self.config.batch.max_batch_size,
                     self.config.batch.max_wait_ms, self.registry.versions() or "none", self.address)
            return
        old[1].stop()  # finishes the requests queued before the swap, with the generator they were checked against
        self.metrics.count_generator_switch("switched")
        log.info("generator switched %s -> %s (%d -> %d items)", old[0].version, generator.version, old[0].num_items,
                 generator.num_items)

    async def _swap(self, generator: CandidateGenerator, batcher: MicroBatcher, catalog: CatalogRef | None):
        """On the loop: the new (generator, batcher) pair in one step; returns the old pair (None if none)."""
        old = self.candidates.generator, self.candidates.batcher
        self.candidates.generator, self.candidates.batcher, self.catalog = generator, batcher, catalog
        return None if old[0] is None else old

    def release(self) -> None:
        """End a `hold_serving` hold: health reports SERVING from now on (at once if the generator is ready)."""
        with self._stop_lock:
            self._held = False
            if self.candidates.generator is not None and not self._stopping:
                self._loop.run(self._set_health(health_pb2.HealthCheckResponse.SERVING))

    def on_stop(self, stop: Callable[[], None]) -> None:
        """Run `stop` first when the server stops (e.g. a generator watcher, which must not swap during a drain)."""
        self._on_stop.append(stop)

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within the grace period."""
        with self._stop_lock:
            first, self._stopping = not self._stopping, True
        if not first:  # a second caller waits for the first one's drain
            self._stopped.wait()
            return
        grace = self.config.grace_s if grace is None else grace
        for stop in self._on_stop:
            stop()
        try:
            self._loop.run(self.health.enter_graceful_shutdown())
            self.draining = True  # set once health reports NOT_SERVING
            if self.config.drain_s > 0:  # health-checking clients stop picking this server before it closes
                log.info("NOT_SERVING; closing in %.1f s", self.config.drain_s)
                time.sleep(self.config.drain_s)
            self._loop.run(self.health.end_watches())
            log.info("draining (grace %.1f s, %d in flight)", grace, self.candidates.in_flight)
            self._loop.run(self.grpc.stop(grace), timeout=grace + 30)
        finally:
            if self.candidates.batcher is not None:
                self.candidates.batcher.stop()
            self._loop.close()
            self.metrics.close()
            self._stopped.set()
        log.info("stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped; True if `timeout` passed first (as grpc's wait_for_termination)."""
        return not self._stopped.wait(timeout)


def _warm_up(generator: CandidateGenerator) -> None:
    """One real call so the first device does not pay for lazy initialisation."""
    if generator.num_items < 1:
        raise UnavailableError(f"generator {generator.version} has an empty catalogue")
    history = [1] if generator.num_items > 1 else []
    generator.generate([history], min(10, generator.num_items - len(history)), [[]])


def create_server(config: ServerConfig, generator: CandidateGenerator | None = None,
                  models_dir: str | Path | None = None, *, address: str | None = None,
                  token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                  tls_client_ca: bytes | None = None, metrics_port: int | None = None, reuse_port: bool = False,
                  hold_serving: bool = False) -> tuple[CloudServer, int]:
    """Build and start the server; returns it and its bound port (address port 0 picks a free one).

    Without a generator it answers UNAVAILABLE (health NOT_SERVING) until `set_generator` is called.
    `tls` is (private key PEM, certificate chain PEM); `tls_client_ca` (PEM) turns on mutual TLS.
    `metrics_port` exposes /metrics on 127.0.0.1. `reuse_port` binds with SO_REUSEPORT (several replicas on one
    port, cloud.replicas); `hold_serving` keeps health NOT_SERVING once the generator is ready until `release()`.
    """
    if tls_client_ca is not None and tls is None:
        raise ConfigError("tls_client_ca", "<pem>", "mutual TLS needs the server's own key and certificate")
    server = CloudServer(config, models_dir, address or config.address, token=token, tls=tls,
                         tls_client_ca=tls_client_ca, reuse_port=reuse_port, hold_serving=hold_serving)
    if metrics_port is not None:
        server.metrics_port = server.metrics.serve(metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", server.metrics_port)
    server.start()
    if generator is not None:
        server.set_generator(generator)
    return server, server.port
