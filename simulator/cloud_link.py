"""Candidate sources the simulated devices call: the generator in-process, or a real gRPC server."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Sequence

from shared.records import Candidate, CandidateRequest, CandidateResponse
from shared.wire import request_to_pb, response_to_pb


class CandidateSource(Protocol):
    """Answers a batch of requests made at (about) the same virtual instant, in order."""

    def fetch(self, requests: Sequence[CandidateRequest]) -> list[CandidateResponse]: ...


_SIZES: dict = {}


def wire_bytes(request: CandidateRequest, response: CandidateResponse | None) -> tuple[int, int]:
    """Serialised protobuf sizes of a call; generation_ms is counted as a set field so both modes agree."""
    up = request_to_pb(request).ByteSize()
    if response is None:
        return up, 0
    vectors = response.vectors
    key = (response.candidates, response.generator_version, response.request_id,
           None if vectors is None else tuple(vectors.item_ids.tolist()))
    size = _SIZES.get(key)
    if size is None:
        fixed = CandidateResponse(response.candidates, response.generator_version, 1.0, response.request_id, vectors)
        size = _SIZES[key] = response_to_pb(fixed).ByteSize()
        if len(_SIZES) > 200_000:
            _SIZES.clear()
    return up, size


class VectorSource:
    """Adds what the cloud sends a catalogue-free device (as the server does, cloud/server.py): the rows of the device
    model's item vector table for each candidate and each `missing_vectors` id, when a request asks for them."""

    def __init__(self, source: CandidateSource, table):
        self.source, self.table = source, table

    def fetch(self, requests):
        out = []
        for request, response in zip(requests, self.source.fetch(requests)):
            if request.with_vectors:
                ids = [c.item for c in response.candidates] + list(request.missing_vectors)
                response = CandidateResponse(response.candidates, response.generator_version, response.generation_ms,
                                             response.request_id, self.table.lookup(ids))
            out.append(response)
        return out


class GeneratorSource:
    """The cloud generator called directly: one batched `generate` per fetch (fast, deterministic)."""

    def __init__(self, generator, batch_size: int = 64):
        self.generator, self.batch_size = generator, batch_size

    def fetch(self, requests):
        out: list[CandidateResponse] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            began = time.perf_counter()
            lists = self.generator.generate([r.history for r in chunk], chunk[0].num_candidates,
                                            [r.exclude for r in chunk])
            ms = (time.perf_counter() - began) * 1e3 / len(chunk)
            out += [CandidateResponse(tuple(c), self.generator.version, ms, r.request_id)
                    for r, c in zip(chunk, lists)]
        return out


def _memo_key(r: CandidateRequest) -> tuple:
    # In protocol B every history is a prefix of the user's sequence: (user, length, last item) names it
    # without hashing the whole history on every call.
    return r.user_id, len(r.history), r.history[-1] if r.history else 0, r.num_candidates, r.exclude


class MemoSource:
    """Remembers answers per history (a history recurs across runs of one experiment)."""

    def __init__(self, source: CandidateSource):
        self.source, self.memo = source, {}
        self.calls = 0

    def fetch(self, requests):
        keys = [_memo_key(r) for r in requests]
        todo, seen = [], set()
        for key, req in zip(keys, requests):
            if key not in self.memo and key not in seen:
                todo.append(req)
                seen.add(key)
        if todo:
            self.calls += len(todo)
            for req, resp in zip(todo, self.source.fetch(todo)):
                self.memo[_memo_key(req)] = resp
        return [CandidateResponse(self.memo[k].candidates, self.memo[k].generator_version,
                                  self.memo[k].generation_ms, r.request_id) for k, r in zip(keys, requests)]


class GrpcSource:
    """Real device clients: concurrent unary calls to `lsc4rec cloud serve` (the server micro-batches)."""

    def __init__(self, address: str, num_items: int, concurrency: int = 32, timeout_s: float = 30.0):
        self.address, self.num_items, self.timeout_s = address, num_items, timeout_s
        self.pool = ThreadPoolExecutor(max_workers=concurrency)
        self.client = _make_client(address, num_items, timeout_s)

    def fetch(self, requests):
        return list(self.pool.map(self.client, requests))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        close = getattr(self.client, "close", None)
        if close:
            close()


def _make_client(address: str, num_items: int, timeout_s: float):
    """device.runtime.client.CloudClient (deadline, retries of UNAVAILABLE only) when present; else a plain stub."""
    try:
        from device.runtime.client import ClientConfig, CloudClient
    except ImportError:
        return _StubClient(address, timeout_s)
    return _DeviceClient(CloudClient(ClientConfig(address=address, timeout_s=timeout_s), num_items))


class _DeviceClient:
    def __init__(self, client):
        self.client = client

    def __call__(self, request):
        return self.client.get_candidates(request)

    def close(self):
        self.client.close()


class _StubClient:
    def __init__(self, address, timeout_s):
        import grpc

        from shared.rpc import lsc4rec_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.stub = lsc4rec_pb2_grpc.CandidateServiceStub(self.channel)
        self.timeout_s = timeout_s

    def __call__(self, request):
        msg = self.stub.GetCandidates(request_to_pb(request), timeout=self.timeout_s)
        cands = tuple(Candidate(int(c.item_id), float(c.score)) for c in msg.candidates)
        return CandidateResponse(cands, msg.generator_version, msg.generation_ms, msg.request_id)

    def close(self):
        self.channel.close()
