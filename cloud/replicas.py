"""`lsc4rec cloud serve --replicas N`: N server processes on one address, under one supervising parent.

The kernel spreads new connections over the replicas (gRPC's `grpc.so_reuseport` server option); each replica is a
whole `cloud serve` process (its own generator, micro-batcher, event loop and GIL). The parent:

- checks the address is free, then holds it with a bound, non-listening SO_REUSEPORT socket for its whole life (this
  resolves port 0 and keeps the port while a replica restarts; a non-listening socket takes no connections);
- starts the replicas (`python -m cloud.cli --replica`). Each one's stdin is a pipe from the parent: its first
  line is the serve arguments, later lines are commands (`serve`), and end-of-file means the parent is gone, so the
  replica drains for at most ORPHAN_GRACE_S and exits (a backstop ends it ORPHAN_EXIT_S later whatever it is doing):
  no replica outlives a parent killed with SIGKILL. A replica reports `ready` and `serving` on a pipe of its own;
- keeps health NOT_SERVING on every replica until all of them are ready, then lets them report SERVING (and writes
  --port-file); a replica started later (a restart) reports SERVING as soon as it is ready;
- restarts a replica that exits, or is not ready within `replicas.ready_s`, after a back-off (`backoff_initial_s`
  doubling to `backoff_max_s`, back to the start once a replica served `backoff_reset_s`), counted in metrics;
- SIGTERM/SIGINT: forwards SIGTERM (each replica drains as a single server does), waits, exits 0;
- SIGHUP: a rolling replacement, one replica at a time: start a new one, wait until it serves, drain the old one.

Metrics (`--metrics-port P`): the parent's own on P (replicas configured and serving, restarts, each replica's
metrics port), replica k's on P+1+k (P = 0: any free port each, listed by the parent's metrics and its log).
This module imports only the standard library at the top: `cloud.server` imports ReplicaConfig from it.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from shared.config import check
from shared.errors import ConfigError, LSC4RecError, UnavailableError

log = logging.getLogger("lsc4rec.replicas")
MAX_REPLICAS = 64
ORPHAN_GRACE_S = 1.0  # a replica whose parent is gone drains this long at most
ORPHAN_EXIT_S = 5.0  # ... and is ended this long after it noticed, whatever it is doing
REPLICA_ENTRY = "cloud.cli"  # the module a replica runs (`python -m REPLICA_ENTRY --replica`); benchmarks swap it
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class ReplicaConfig:
    """The supervising parent of `cloud serve --replicas N` (ServerConfig.replicas; `--set replicas.KEY=VALUE`)."""

    ready_s: float = 300.0  # a replica not ready this long after its start is killed (and restarted, once serving)
    backoff_initial_s: float = 0.5  # pause before restarting a replica that exited ...
    backoff_max_s: float = 30.0  # ... doubling after each failure up to this
    backoff_reset_s: float = 60.0  # a replica that served this long starts its back-off from the beginning again

    def __post_init__(self):
        check(self.ready_s > 0, "replicas.ready_s", self.ready_s, "must be > 0")
        check(0 < self.backoff_initial_s <= self.backoff_max_s, "replicas.backoff_initial_s", self.backoff_initial_s,
              "must be in (0, replicas.backoff_max_s]")
        check(self.backoff_reset_s > 0, "replicas.backoff_reset_s", self.backoff_reset_s, "must be > 0")


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_replicas(text: str | int) -> int:
    """`--replicas`: 1..64, or `auto` (one per core, at most 64)."""
    if str(text).strip().lower() == "auto":
        return min(cpu_count(), MAX_REPLICAS)
    try:
        count = int(str(text).strip())
    except ValueError:
        count = None
    if count is None or not 1 <= count <= MAX_REPLICAS:
        raise ConfigError("--replicas", str(text), f"must be in 1..{MAX_REPLICAS} or auto")
    return count


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError("--address", address, "must look like host:port (port 0..65535)")
    return host.strip("[]"), int(port)


def reserve_address(address: str) -> tuple[socket.socket, int]:
    """Refuse an address in use (a plain bind: another server, even one with SO_REUSEPORT, is refused), then hold
    it with a bound, non-listening SO_REUSEPORT socket, which the replicas can share. Returns it and the port."""
    host, port = _split_address(address)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError("--address", address, f"cannot resolve: {exc}") from None
    if port:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
            probe.bind(sockaddr)
            probe.listen(1)
        except OSError as exc:
            raise ConfigError("--address", address, f"cannot bind: {exc.strerror or exc}") from None
        finally:
            probe.close()
    hold = socket.socket(family, kind, proto)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        hold.bind(sockaddr)
    except OSError as exc:
        hold.close()
        raise ConfigError("--address", address, f"cannot bind: {exc.strerror or exc}") from None
    return hold, hold.getsockname()[1]


# ---------------------------------------------------------------- the parent
class _Replica:
    """One replica process: its pipes, its state (starting -> ready -> serving -> draining) and what it reported."""

    def __init__(self, index: int, generation: int, proc: subprocess.Popen, status_fd: int, events: queue.Queue):
        self.index, self.generation, self.proc = index, generation, proc
        self.state, self.started, self.serving_since = "starting", time.monotonic(), None
        self.metrics_port: int | None = None
        self.told = False  # sent `serve`
        self._reader = threading.Thread(target=self._read, args=(status_fd, events), daemon=True,
                                        name=f"replica-{index}-status")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, fd: int, events: queue.Queue) -> None:
        with os.fdopen(fd, "rb") as status:
            for line in status:
                try:
                    events.put((self, json.loads(line)))
                except ValueError:
                    log.warning("replica %d: unreadable status line %r", self.index, line[:200])

    def command(self, text: str) -> None:
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # it is exiting; its exit is handled by the supervisor
            pass

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class _Slot:
    """Replica k: the process serving now (None while it waits for a restart), its replacement during a rolling
    update, and its back-off."""

    def __init__(self, index: int):
        self.index = index
        self.current: _Replica | None = None
        self.replacement: _Replica | None = None
        self.failures = 0
        self.restart_at: float | None = None
        self.generation = 0


class Supervisor:
    """The parent of `cloud serve --replicas N` (see the module's docstring)."""

    def __init__(self, args: argparse.Namespace, count: int, config, entry: str | None = None):
        self.args, self.count, self.config = args, count, config
        self.rc = config.replicas
        self.entry = entry or REPLICA_ENTRY
        self.slots = [_Slot(k) for k in range(count)]
        self.events: queue.Queue = queue.Queue()
        self.draining: list[_Replica] = []  # replaced ones, draining
        self.rolling: list[int] = []  # indices still to replace (SIGHUP)
        self._stop_requested = self._roll_requested = False
        self.restarts = [0] * count
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_http = None

    # ---------------- metrics
    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        registry = CollectorRegistry()
        Gauge("lsc4rec_replicas", "replicas configured (--replicas)", registry=registry).set(self.count)
        Gauge("lsc4rec_replicas_serving", "replicas reporting SERVING now", registry=registry).set_function(
            lambda: sum(s.current is not None and s.current.state == "serving" for s in self.slots))
        self._restart_counter = Counter("lsc4rec_replica_restarts", "replicas restarted after an exit or a missed "
                                        "ready deadline, by replica", ["replica"], registry=registry)
        self._port_gauge = Gauge("lsc4rec_replica_metrics_port", "the port of each replica's own /metrics",
                                 ["replica"], registry=registry)
        for k in range(self.count):
            self._restart_counter.labels(replica=str(k))
        server, _thread = start_http_server(self.args.metrics_port, addr="127.0.0.1", registry=registry)
        self._metrics_http = server
        self.metrics_port = server.server_port
        log.info("supervisor metrics on http://127.0.0.1:%d/metrics", self.metrics_port)

    def _replica_metrics_port(self, index: int) -> int | None:
        if self.args.metrics_port is None:
            return None
        return 0 if self.args.metrics_port == 0 else self.args.metrics_port + 1 + index

    # ---------------- processes
    def _spawn(self, slot: _Slot) -> _Replica:
        slot.generation += 1
        args = argparse.Namespace(**{k: v for k, v in vars(self.args).items() if k != "func"})
        args.replicas, args.port_file = "1", None
        args.address = f"{self.host}:{self.port}"
        args.metrics_port = self._replica_metrics_port(slot.index)
        if self.config.generator_threads == 0:  # share the cores among the replicas' torch threads
            args.overrides = list(args.overrides) + [f"generator_threads={max(1, cpu_count() // self.count)}"]
        read, write = os.pipe()
        header = {"args": base64.b64encode(pickle.dumps(args)).decode(), "index": slot.index, "status_fd": write}
        try:
            proc = subprocess.Popen([sys.executable, "-m", self.entry, "--replica"], stdin=subprocess.PIPE,
                                    pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        replica = _Replica(slot.index, slot.generation, proc, read, self.events)
        replica.command(json.dumps(header))
        log.info("replica %d started (pid %d)", slot.index, proc.pid)
        return replica

    def _live(self) -> list[_Replica]:
        out = [r for s in self.slots for r in (s.current, s.replacement) if r is not None]
        return out + self.draining

    # ---------------- run
    def run(self) -> int:
        hold, self.port = reserve_address(self.args.address or self.config.address)
        self.host = (self.args.address or self.config.address).rpartition(":")[0]
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_roll)
        try:
            if self.args.metrics_port is not None:
                self._serve_metrics()
            for slot in self.slots:
                slot.current = self._spawn(slot)
            if not self._start_all():
                return self._shutdown()
            self._write_port_file()
            log.info("%d replicas serving on %s:%d", self.count, self.host, self.port)
            self._loop()
            return self._shutdown()
        except BaseException:
            self._kill_all()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for replica in self._live():
                replica.close()
            hold.close()
            if self._metrics_http is not None:
                self._metrics_http.shutdown()
                self._metrics_http.server_close()

    def _on_stop(self, *_):
        self._stop_requested = True

    def _on_roll(self, *_):
        self._roll_requested = True

    def _start_all(self) -> bool:
        """Wait until every replica is ready (False: stopped meanwhile), then let them all report SERVING."""
        while not self._stop_requested:
            self._drain_events(0.1)
            for slot in self.slots:
                replica = slot.current
                code = replica.proc.poll()
                if code is not None:
                    raise UnavailableError(f"--replicas {self.count}: replica {slot.index} (pid {replica.pid}) exited "
                                           f"with code {code} before it was ready; all replicas stopped")
                if replica.state == "starting" and time.monotonic() - replica.started > self.rc.ready_s:
                    raise UnavailableError(f"--replicas {self.count}: replica {slot.index} (pid {replica.pid}) was "
                                           f"not ready within replicas.ready_s = {self.rc.ready_s:g} s; all replicas "
                                           f"stopped")
            if all(s.current.state == "ready" for s in self.slots):
                break
        else:
            return False
        for slot in self.slots:
            slot.current.command("serve")
            slot.current.told = True
        deadline = time.monotonic() + 30
        while not all(s.current.state == "serving" for s in self.slots):
            if self._stop_requested:
                return False
            if time.monotonic() > deadline:
                raise UnavailableError(f"--replicas {self.count}: replicas ready but not serving within 30 s")
            self._drain_events(0.1)
            for slot in self.slots:
                if slot.current.proc.poll() is not None:
                    raise UnavailableError(f"--replicas {self.count}: replica {slot.index} (pid {slot.current.pid}) "
                                           f"exited with code {slot.current.proc.returncode} while starting")
        return True

    def _write_port_file(self) -> None:
        if self.args.port_file is not None:
            tmp = Path(self.args.port_file).with_suffix(".tmp")
            tmp.write_text(f"{self.port}\n")
            tmp.replace(self.args.port_file)

    def _drain_events(self, timeout: float) -> None:
        try:
            replica, event = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._on_event(replica, event)
            try:
                replica, event = self.events.get_nowait()
            except queue.Empty:
                return

    def _on_event(self, replica: _Replica, event: dict) -> None:
        kind = event.get("event")
        if kind == "ready" and replica.state == "starting":
            replica.state, replica.metrics_port = "ready", event.get("metrics_port")
            if replica.metrics_port is not None and self._metrics_http is not None:
                self._port_gauge.labels(replica=str(replica.index)).set(replica.metrics_port)
            log.info("replica %d ready (pid %d%s)", replica.index, replica.pid,
                     f", metrics on 127.0.0.1:{replica.metrics_port}" if replica.metrics_port else "")
        elif kind == "serving" and replica.state == "ready":
            replica.state, replica.serving_since = "serving", time.monotonic()

    def _loop(self) -> None:
        """Serve until SIGTERM/SIGINT: restart replicas that exit, replace them one by one on SIGHUP."""
        while not self._stop_requested:
            self._drain_events(0.1)
            now = time.monotonic()
            for replica in self._live():
                if replica.state == "ready" and not replica.told:
                    replica.command("serve")  # a restarted or replacement replica serves as soon as it is ready
                    replica.told = True
            for replica in list(self.draining):
                if replica.proc.poll() is not None:
                    self.draining.remove(replica)
                    replica.close()
                    log.info("replica %d (pid %d) drained, exit code %d", replica.index, replica.pid,
                             replica.proc.returncode)
            for slot in self.slots:
                self._check_slot(slot, now)
            if self._roll_requested:
                self._roll_requested = False
                if self.rolling:
                    log.info("SIGHUP: a rolling replacement is already under way")
                else:
                    self.rolling = list(range(self.count))
                    log.info("SIGHUP: replacing the %d replicas one at a time", self.count)
            self._roll_step()

    def _check_slot(self, slot: _Slot, now: float) -> None:
        if self._stop_requested:  # a terminal's Ctrl-C reaches the replicas too: their exits are no crashes
            return
        for attr in ("current", "replacement"):
            replica: _Replica | None = getattr(slot, attr)
            if replica is None:
                continue
            if replica.state in ("starting", "ready") and now - replica.started > self.rc.ready_s:
                log.error("replica %d (pid %d) not ready within replicas.ready_s = %g s: killed", slot.index,
                          replica.pid, self.rc.ready_s)
                replica.signal(signal.SIGKILL)
                replica.proc.wait(10)
            code = replica.proc.poll()
            if code is None:
                continue
            replica.close()
            setattr(slot, attr, None)
            self.restarts[slot.index] += 1
            if self._metrics_http is not None:
                self._restart_counter.labels(replica=str(slot.index)).inc()
            if replica.serving_since is not None and now - replica.serving_since >= self.rc.backoff_reset_s:
                slot.failures = 0
            if attr == "replacement":
                log.error("replica %d's replacement (pid %d) exited with code %d before serving; rolling "
                          "replacement stopped, the old one keeps serving", slot.index, replica.pid, code)
                self.rolling = []
                continue
            delay = min(self.rc.backoff_initial_s * 2 ** slot.failures, self.rc.backoff_max_s)
            slot.failures += 1
            slot.restart_at = now + delay
            log.warning("replica %d (pid %d) exited with code %d; restart %d in %.1f s", slot.index, replica.pid,
                        code, self.restarts[slot.index], delay)
        if slot.current is None and slot.restart_at is not None and now >= slot.restart_at:
            slot.restart_at = None
            slot.current = self._spawn(slot)

    def _roll_step(self) -> None:
        if not self.rolling:
            return
        slot = self.slots[self.rolling[0]]
        if slot.current is None:  # restarting anyway: nothing to replace
            self.rolling.pop(0)
            return
        if slot.replacement is None:
            if self.draining:  # one at a time: the previous old one has drained first
                return
            if slot.current.state != "serving":
                return  # wait until it serves (a restart under way)
            slot.replacement = self._spawn(slot)
            return
        if slot.replacement.state == "serving":
            old, slot.current, slot.replacement = slot.current, slot.replacement, None
            old.state = "draining"
            self.draining.append(old)
            old.signal(signal.SIGTERM)
            log.info("replica %d replaced (pid %d -> %d); the old one drains", slot.index, old.pid, slot.current.pid)
            self.rolling.pop(0)
            if not self.rolling:
                log.info("rolling replacement done")

    def _shutdown(self) -> int:
        """SIGTERM every replica (each drains), wait, SIGKILL what is left after the grace; 0 if all exited 0."""
        live = self._live()
        log.info("stopping %d replicas", len(live))
        for replica in live:
            replica.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_s + self.config.drain_s + 30
        bad = []
        for replica in live:
            try:
                code = replica.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.signal(signal.SIGKILL)
                code = replica.proc.wait(10)
            if code != 0:
                bad.append(f"replica {replica.index} (pid {replica.pid}): {code}")
        if bad:
            log.error("replicas that did not exit cleanly: %s", ", ".join(bad))
            return 1
        log.info("stopped")
        return 0

    def _kill_all(self) -> None:
        """After an error: drain the replicas that serve, kill the others (they have nothing to drain)."""
        live = [r for r in self._live() if r.proc.poll() is None]
        for replica in live:
            replica.signal(signal.SIGTERM if replica.state in ("serving", "draining") else signal.SIGKILL)
        deadline = time.monotonic() + 5
        for replica in live:
            try:
                replica.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.signal(signal.SIGKILL)
                replica.proc.wait(10)


def supervise(args: argparse.Namespace, count: int, config) -> int:
    """Run `count` replicas of `cloud serve` (args) on one address until SIGTERM; see the module docstring."""
    return Supervisor(args, count, config).run()


# ---------------------------------------------------------------- a replica
class ReplicaLink:
    """A replica's side of the pipes: commands from the parent, `ready`/`serving` to it; end of file = orphaned."""

    def __init__(self, index: int, status_fd: int, control: "_Lines"):
        self.index = index
        self.stop = threading.Event()
        self.orphaned = False
        self.log_format = f"%(asctime)s %(levelname)s %(name)s[replica {index}]: %(message)s"
        self._status = os.fdopen(status_fd, "w", buffering=1)
        self._lock = threading.Lock()
        self._server = None
        self._control = control
        threading.Thread(target=self._watch, name="replica-control", daemon=True).start()

    def attach(self, server) -> None:
        self._server = server

    def ready(self, port: int, metrics_port: int | None) -> None:
        self._send({"event": "ready", "pid": os.getpid(), "port": port, "metrics_port": metrics_port})

    def grace(self, config) -> float | None:
        """The drain's grace period: the configured one, or at most ORPHAN_GRACE_S when the parent is gone."""
        return min(config.grace_s, ORPHAN_GRACE_S) if self.orphaned else None

    def _send(self, event: dict) -> None:
        with self._lock:
            try:
                self._status.write(json.dumps(event) + "\n")
            except (BrokenPipeError, ValueError):
                pass

    def _watch(self) -> None:
        for line in self._control:
            if line.strip() == b"serve" and self._server is not None:
                self._server.release()
                self._send({"event": "serving"})
        # End of file: the parent is gone (or closed us): drain briefly and exit; never outlive it for long.
        self.orphaned = True
        self.stop.set()
        time.sleep(ORPHAN_EXIT_S)
        os._exit(3)


class _Lines:
    """Lines of a pipe read with os.read: no buffered reader's lock, which a daemon thread blocked in a read would
    hold at interpreter exit."""

    def __init__(self, fd: int):
        self.fd, self._rest = fd, b""

    def readline(self) -> bytes:
        while b"\n" not in self._rest:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if not data:
                line, self._rest = self._rest, b""
                return line
            self._rest += data
        line, _, self._rest = self._rest.partition(b"\n")
        return line + b"\n"

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def replica_main(serve: Callable[..., int]) -> int:
    """A replica process: read the serve arguments from stdin's first line, then `serve(args, replica=link)`
    (cloud.cli.serve_main, which runs this from its `__main__`: this module imports no serving code)."""
    control = _Lines(0)
    line = control.readline()
    if not line.endswith(b"\n"):
        return 3  # the parent is gone before it told us anything
    header = json.loads(line)
    args = pickle.loads(base64.b64decode(header["args"]))
    link = ReplicaLink(header["index"], header["status_fd"], control)
    try:
        return serve(args, replica=link)
    except LSC4RecError as exc:
        print(f"lsc4rec: error: replica {header['index']}: {exc}", file=sys.stderr, flush=True)
        return 2

