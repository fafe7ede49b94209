"""Prometheus metrics of the cloud server: requests by status, latency, batch sizes, queue depth."""
from __future__ import annotations

from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0, in_flight: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        self._children: dict = {}
        self.requests = Counter("lsc4rec_requests", "RPCs by method and final status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("lsc4rec_request_seconds", "RPC latency in seconds by method",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("lsc4rec_batch_size", "requests per generator call",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("lsc4rec_queue_depth", "requests waiting for the micro-batcher",
                                 registry=self.registry)
        self.in_flight = Gauge("lsc4rec_in_flight", "GetCandidates calls being served", registry=self.registry)
        self.generator_items = Gauge("lsc4rec_generator_items", "items in the served generator's catalogue, by its "
                                     "version (one series: the version now serving)", ["version"],
                                     registry=self.registry)
        self.generator_switches = Counter("lsc4rec_generator_switches", "generator versions switched to while serving "
                                          "(outcome=switched) or refused (outcome=refused)", ["outcome"],
                                          registry=self.registry)
        self._generator_version: str | None = None
        self.queue_depth.set_function(lambda: queue_depth())
        self.in_flight.set_function(lambda: in_flight())

    def bind(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        """Point the gauges at the live server state."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)

    def record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code)
        children = self._children.get(key)
        if children is None:  # labels() takes a lock and builds a tuple: do it once per (method, code)
            children = self._children[key] = (self.requests.labels(method=method, code=code.name),
                                              self.latency.labels(method=method))
        children[0].inc()
        children[1].observe(seconds)

    def set_generator(self, version: str, num_items: int) -> None:
        """The served generator: its version becomes the one series of lsc4rec_generator_items."""
        if self._generator_version is not None and self._generator_version != version:
            self.generator_items.remove(self._generator_version)
        self.generator_items.labels(version=version).set(num_items)
        self._generator_version = version

    def count_generator_switch(self, outcome: str) -> None:
        self.generator_switches.labels(outcome=outcome).inc()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def count(self, method: str, code: str) -> float:
        """The current value of one request counter (for tests and reports)."""
        value = self.registry.get_sample_value("lsc4rec_requests_total", {"method": method, "code": code})
        return value or 0.0

    def text(self) -> bytes:
        """The exposition text, as a scrape would see it."""
        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP on a separate port (0 = any free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
