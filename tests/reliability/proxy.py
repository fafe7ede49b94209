"""A small threaded TCP fault proxy on 127.0.0.1: pass-through, black hole, resets, bandwidth limit, delay.

There is no toxiproxy or tc netem on this machine, so faults are injected here, between a gRPC
client and server on loopback. Every thread polls with a short timeout and stops on `close()`;
the proxy never listens outside 127.0.0.1.

Modes (switchable at any time through the attributes):
- `mode = "pass"`: forward both ways (subject to `bytes_per_s` and `delay_s`).
- `mode = "blackhole"`: keep every connection open but forward nothing (bytes are read and dropped,
  as a network that silently loses every packet would).
- `mode = "reset"`: every new connection is reset (RST) at once; `reset_all()` resets open ones.
- `reset_after_bytes = n`: a connection is reset after it forwarded n bytes (either direction).
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time

_POLL_S = 0.02
_CHUNK = 16384


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer sees a TCP RST, not a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _Link:
    """One proxied connection: the client socket, the upstream socket and two pump threads."""

    def __init__(self, proxy: "FaultProxy", client: socket.socket, upstream: socket.socket):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.forwarded = 0
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._pump, args=(client, upstream), daemon=True,
                                         name="proxy-up"),
                        threading.Thread(target=self._pump, args=(upstream, client), daemon=True,
                                         name="proxy-down")]
        for thread in self.threads:
            thread.start()

    def close(self, reset: bool = False) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
            else:
                try:
                    sock.close()
                except OSError:
                    pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        proxy = self.proxy
        while not self.closed.is_set() and not proxy.stopped.is_set():
            try:
                ready, _, _ = select.select([src], [], [], _POLL_S)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            limit = proxy.bytes_per_s
            try:
                data = src.recv(min(_CHUNK, max(1, int(limit * _POLL_S))) if limit else _CHUNK)
            except OSError:
                break
            if not data:
                break
            if proxy.mode == "blackhole":
                continue  # dropped; the connection stays open
            if proxy.delay_s:
                time.sleep(proxy.delay_s)
            if not self._send(dst, data, limit):
                break
            self.forwarded += len(data)
            if proxy.reset_after_bytes and self.forwarded >= proxy.reset_after_bytes:
                proxy.resets += 1
                self.close(reset=True)
                return
        self.close()

    def _send(self, dst: socket.socket, data: bytes, limit: float) -> bool:
        try:
            dst.sendall(data)
        except OSError:
            return False
        if limit:
            time.sleep(len(data) / limit)  # token bucket of one chunk: the average rate is `limit`
        return True


class FaultProxy:
    """Listens on 127.0.0.1:port and forwards to `target` ("127.0.0.1:PORT"), injecting faults."""

    def __init__(self, target: str, bytes_per_s: float = 0.0, max_links: int = 256):
        host, port = target.rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {host}")
        self.target = ("127.0.0.1", int(port))
        self.mode = "pass"
        self.bytes_per_s = bytes_per_s  # 0 = unlimited; 1 Mbit/s = 125_000
        self.delay_s = 0.0  # added before each forwarded chunk
        self.reset_after_bytes = 0
        self.max_links = max_links
        self.accepted = self.resets = 0
        self.stopped = threading.Event()
        self.links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")
        self._acceptor.start()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], _POLL_S)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                break
            self.accepted += 1
            if self.mode == "reset" or len(self.open_links()) >= self.max_links:
                self.resets += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            link = _Link(self, client, upstream)
            with self._lock:
                self.links = [l for l in self.links if not l.closed.is_set()] + [link]

    def open_links(self) -> list[_Link]:
        with self._lock:
            return [l for l in self.links if not l.closed.is_set()]

    def reset_all(self) -> int:
        """RST every open connection; returns how many."""
        links = self.open_links()
        for link in links:
            link.close(reset=True)
        self.resets += len(links)
        return len(links)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join every thread (bounded by `timeout`)."""
        self.stopped.set()
        self._acceptor.join(timeout)
        self._listener.close()
        with self._lock:
            links = list(self.links)
        for link in links:
            link.close()
        for link in links:
            for thread in link.threads:
                thread.join(timeout)

    def threads_alive(self) -> int:
        with self._lock:
            links = list(self.links)
        return sum(t.is_alive() for l in links for t in l.threads) + self._acceptor.is_alive()
