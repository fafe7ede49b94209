"""Protocol B replay on a virtual clock: one simulated device per user, events in global time order."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

from device.runtime.policies import Policy, PolicySpec
from shared.errors import UnavailableError
from shared.records import CandidateRequest
from simulator.cloud_link import CandidateSource, wire_bytes
from simulator.device_adapter import MAX_REQUEST_HISTORY, fusion_config, make_session
from simulator.network import Delivery, NetworkModel

ROW_FIELDS = ("user", "step", "ts", "target", "rank", "requested", "reason", "delivered", "stale",
              "score", "latency_ms", "bytes_up", "bytes_down", "model")


@dataclass(frozen=True)
class Streams:
    """Protocol B for the users taking part: past, what the cloud saw, the live stream and its times."""

    users: np.ndarray  # (U,) dense user ids
    past: tuple[np.ndarray, ...]
    cloud_seen: tuple[np.ndarray, ...]
    items: np.ndarray  # (U, S) stream items
    times: np.ndarray  # (U, S) float64 timestamps (virtual clock, seconds)
    order: np.ndarray  # (U * S, 2) (user index, step) in global time order

    @property
    def span(self) -> tuple[float, float]:
        return float(self.times.min()), float(self.times.max())

    def subset(self, index: np.ndarray) -> "Streams":
        index = np.asarray(index, dtype=np.int64)
        return make_streams(self.users[index], [self.past[i] for i in index],
                            [self.cloud_seen[i] for i in index], self.items[index], self.times[index])


def make_streams(users, past, cloud_seen, items, times) -> Streams:
    items, times = np.asarray(items, dtype=np.int64), np.asarray(times, dtype=np.float64)
    num_users, length = items.shape
    uidx = np.repeat(np.arange(num_users), length)
    step = np.tile(np.arange(length), num_users)
    # Global time order; ties by dense user id, then step (deterministic for any user subset).
    order = np.lexsort((step, np.asarray(users)[uidx], times.ravel()))
    return Streams(np.asarray(users), tuple(past), tuple(cloud_seen), items, times,
                   np.stack([uidx[order], step[order]], axis=1))


def build_streams(dataset, stream_length: int, cloud_lag: int, max_users: int = 0,
                  shift: int = 0) -> Streams:
    """Protocol B streams; `shift` > 0 moves the stream `shift` items back (calibration on the past only)."""
    inter = dataset.interactions
    bounds = dataset.user_bounds()
    need = stream_length + cloud_lag + 2 + shift
    users, past, seen, items, times = [], [], [], [], []
    for u in range(1, dataset.num_users + 1):
        seq, ts = inter[bounds[u - 1]:bounds[u], 1], inter[bounds[u - 1]:bounds[u], 2]
        if len(seq) < need:
            continue
        end = len(seq) - shift
        start = end - stream_length
        users.append(u)
        past.append(seq[:start])
        seen.append(seq[:start - cloud_lag] if cloud_lag else seq[:start])
        items.append(seq[start:end])
        times.append(ts[start:end])
        if max_users and len(users) == max_users:
            break
    return make_streams(users, past, seen, items, times)


@dataclass
class RunResult:
    """Per-step rows of one run (arrays keyed like ROW_FIELDS) and its summary figures."""

    spec: dict
    rows: dict[str, np.ndarray]
    summary: dict = field(default_factory=dict)


@dataclass
class _Pending:
    request: CandidateRequest
    step: int
    delivery: Delivery
    arrival: float
    row: int = -1  # index of the step's row, to fill in the answer's size
    request_bytes: int = 0


class Replay:
    """Runs one policy x fusion x seed over the streams; the cloud answers through `source`.

    Every user is a real `device.runtime.session.DeviceSession` in driven mode: the replay delivers its
    events, collects its requests, lets the network model decide their fate, sends the delivered ones
    in batches (everything outstanding goes together when some device needs its answer), and hands
    each answer back before that device's next event (or after it, for answers still in flight).
    """

    def __init__(self, streams: Streams, source: CandidateSource, reranker, *, device=None, vectors=None,
                 num_candidates: int, slate_size: int, alpha: float = 0.5, srm_norm: str = "prob", llm_norm: str = "rank",
                 network: NetworkModel | None = None, deliver: str = "next-step",
                 retrain: tuple[int, Callable] | None = None, progress: bool = True, measure: str = "lsc4rec"):
        self.s, self.source, self.reranker = streams, source, reranker
        # What the sessions hold: the reranker, or a catalogue-free device's user encoder, which then receives each
        # consumed item's vector with the item (from `vectors`, the model's table, as an app's item page would bring
        # it) and the vectors of every list (the source adds them, as the server does).
        self.device, self.vectors = (reranker if device is None else device), vectors
        self.n, self.k, self.alpha, self.srm_norm, self.llm_norm = num_candidates, slate_size, alpha, srm_norm, llm_norm
        self.network, self.deliver, self.retrain, self.progress = network, deliver, retrain, progress
        self.measure = measure
        self.unsent: list[tuple[int, _Pending]] = []  # delivered requests not yet sent to the cloud
        self.updates: list[dict] = []  # model versions published during the last run
        self.clock_ms = 0.0  # the virtual clock every session reads

    def initial_lists(self) -> list:
        """What the cloud generated from the history it last saw (before the sessions start)."""
        reqs = [CandidateRequest(str(int(u)), tuple(int(i) for i in h[-MAX_REQUEST_HISTORY:]), self.n,
                                 request_id=f"{int(u)}-init") for u, h in zip(self.s.users, self.s.cloud_seen)]
        if self.vectors is not None:  # a device that has been running holds its recent history's vectors
            window, version = self.device.history_length, self.device.manifest.version
            reqs = [dataclasses.replace(r, with_vectors=True, device_model_version=version,
                                        missing_vectors=tuple(dict.fromkeys(int(i) for i in past[-window:])))
                    for r, past in zip(reqs, self.s.past)]
        return self.source.fetch(reqs)

    def sessions(self, policy: Policy, fusion: str, initial: list) -> list:
        """One session per user, all holding `policy` (one object: a fleet-wide policy sees every device)."""
        fusion_cfg = fusion_config(fusion, self.alpha, self.srm_norm, self.llm_norm)
        return [make_session(int(user), past, initial[u], self.device, policy, fusion_cfg, self.k, self.n,
                             lambda: self.clock_ms, self.measure)
                for u, (user, past) in enumerate(zip(self.s.users, self.s.past))]

    def run(self, spec: PolicySpec, fusion: str, seed: int, initial: list | None = None) -> RunResult:
        """Replay every stream event; rows come back in global time order.

        Without re-training the users are independent (a device depends only on its own events and
        the cloud's answers to its own requests; network draws are keyed by user and step), so the
        events are processed in rounds — the t-th event of every user, then one batch of all requests
        — which gives exactly the rows of the one-event-at-a-time global order, with large batches.
        Re-training couples all users through the global event count, and a policy with fleet-wide state
        (an adaptive budget) through the decisions before each event: those paths go event by event in
        global time order, so no decision sees an event that comes later in time.
        """
        s = self.s
        initial = initial if initial is not None else self.initial_lists()
        self.updates, self.unsent = [], []
        policy = spec.build()  # a fresh object per run: a stateful policy starts anew
        sessions = self.sessions(policy, fusion, initial)
        self._rows = {f: [] for f in ROW_FIELDS}
        pending: dict[int, _Pending] = {}
        answers: dict[int, object] = {}
        bar = tqdm(total=len(s.order), desc=f"{policy.label()} {fusion} seed {seed}", unit="ev", leave=False,
                   disable=not self.progress, mininterval=1.0)
        if self.retrain is None and not policy.fleet_state:
            for t in range(s.items.shape[1]):
                for u in np.lexsort((s.users, s.times[:, t])):
                    self._event(int(u), t, sessions[int(u)], pending, answers)
                self._flush(pending, answers)
                bar.update(len(s.users))
        else:
            for count, (u, t) in enumerate(s.order, start=1):
                self._event(int(u), int(t), sessions[int(u)], pending, answers)
                bar.update(1)
                if self.retrain is not None and count % self.retrain[0] == 0 and count < len(s.order):
                    self._retrain(count, float(s.times[u, t]), sessions)
        bar.close()
        self._flush(pending, answers)  # the last requests still travel (bytes counted, lists unused)
        rows = {k: np.asarray(v) for k, v in self._rows.items()}
        order = np.lexsort((rows["step"], rows["user"], rows["ts"]))  # global time order, as s.order
        return RunResult({"policy": spec.name, "label": policy.label(), "fusion": fusion, "seed": seed},
                         {k: v[order] for k, v in rows.items()})

    def _event(self, u: int, t: int, sess, pending: dict, answers: dict) -> None:
        """Protocol B step t of user u: slate shown -> metrics -> item revealed -> policy -> request."""
        s, rows = self.s, self._rows
        ts = float(s.times[u, t])
        self.clock_ms = ts * 1e3
        late = self._resolve(u, ts, sess, pending, answers)
        slate = sess.slate()
        target = int(s.items[u, t])
        rank = slate.items.index(target) if target in slate.items else -1
        stale = slate.stale or late
        if late:
            self._apply(u, sess, pending.pop(u), answers)
        if self.vectors is not None:
            sess.receive_vectors(self.vectors.lookup([target]))
        result = sess.on_event(target)
        want = sess.needs_refresh and sess.ready_to_request()
        reason = result.decision.reason if result.decision.request else ("retry" if want else "")
        up, delivered, latency = 0, False, float("nan")
        if want:
            pend = self._request(u, t, ts, sess, len(rows["user"]))
            up, delivered, latency = pend.request_bytes, pend.delivery.ok, pend.delivery.latency_ms
            pending[u] = pend
            if pend.delivery.ok:
                self.unsent.append((u, pend))
        self._row(rows, int(s.users[u]), t, ts, target, rank, want, reason, delivered, stale,
                  sess.last_score, latency, up, 0, self.reranker.version)

    def _retrain(self, count: int, ts: float, sessions: list) -> None:
        """Fine-tune on everything the devices have seen so far; every device uses the new version next."""
        began = time.perf_counter()
        model, size = self.retrain[1]([np.asarray(x.history, dtype=np.int64) for x in sessions])
        self.reranker.set_model(model)
        self.updates.append({"after_events": count, "ts": ts, "version": self.reranker.version,
                             "artifact_bytes": int(size), "download_bytes": int(size) * len(sessions),
                             "wall_s": time.perf_counter() - began})

    def _request(self, u: int, t: int, ts: float, sess, row: int) -> _Pending:
        req = sess.build_request()
        up, _ = wire_bytes(req, None)
        delivery = Delivery(True, 0.0)
        if self.network is not None:
            # Transfer time is modelled with a full list's size (ids and scores, about 12 bytes each; with item vectors
            # for a catalogue-free device, about dim + 8 more).
            per_item = 12 + (0 if self.vectors is None else self.vectors.dim + 8)
            delivery = self.network.deliver(int(self.s.users[u]), t, ts, up, per_item * self.n + 40)
        return _Pending(req, t, delivery, ts + delivery.latency_ms / 1e3, row, up)

    def _resolve(self, u, ts, sess, pending, answers) -> bool:
        """Apply the user's outstanding answer before its slate; True if it is still in flight (late)."""
        pend = pending.get(u)
        if pend is None:
            return False
        if pend.delivery.ok and u not in answers:
            self._flush(pending, answers)
        if self.deliver == "clock" and pend.delivery.ok and pend.arrival > ts:
            return True
        self._apply(u, sess, pending.pop(u), answers)
        return False

    def _flush(self, pending, answers) -> None:
        """Send every delivered request not yet sent, as one batch."""
        todo, self.unsent = self.unsent, []
        if not todo:
            return
        for (u, p), resp in zip(todo, self.source.fetch([p.request for _, p in todo])):
            answers[u] = resp
            self._rows["bytes_down"][p.row] = wire_bytes(p.request, resp)[1]

    def _apply(self, u, sess, pend, answers) -> None:
        if not pend.delivery.ok:
            sess.report_failure(UnavailableError(f"request {pend.request.request_id}: {pend.delivery.reason}"))
            return
        sess.apply_candidates(answers.pop(u))

    @staticmethod
    def _row(rows, *values) -> None:
        for name, value in zip(ROW_FIELDS, values):
            rows[name].append(value)
