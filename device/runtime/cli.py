"""`lsc4rec device run` (replay one user's events against a cloud server) and `device bench` (per-event latency); no torch."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from device.runtime.consistency import MEASURES
from device.runtime.encoder import UserEncoder
from device.runtime.fusion import LLM_NORMS, RULES, SRM_NORMS, FusionConfig
from device.runtime.policies import parse_policy, usages
from shared.cli import add_json_flag, emit, handler
from shared.errors import DataFormatError, InvalidArgumentError
from shared.vector_table import ItemVectors

# `device run` defaults to what measured best (docs/results.md) and what `make demo` runs (simulator/presets/demo.toml,
# where each choice is explained; a test keeps the two equal): the product of experts - alpha x the LLM's sequence
# log-probability + (1 - alpha) x the SRM's logit - and requests on the catalogue regret under a 20% budget. The
# reference rule and the reference's `lsc4rec` score measured worse (the latter worse than random requests).
BEST_FUSION = FusionConfig(rule="linear", alpha=0.35, llm_norm="logprob", srm_norm="logit")
BEST_MEASURE = "regret"
FREE_MEASURE, FREE_MEASURE_NO_HEAD = "est-regret", "miss-belief"  # a catalogue-free device (user encoder)
BEST_POLICY = "budget:0.2"


def _policy(text: str) -> str:
    """argparse type of --policy: a spelling `parse_policy` accepts (checked before any work; exit 2 otherwise)."""
    try:
        parse_policy(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add `device run` and `device bench` (handlers import their modules only when run)."""
    run = groups["device"].add_parser(
        "run", help="replay one user's events against a cloud server, printing each slate",
        description="Replay a user's events through a DeviceSession talking to a real cloud server: for each "
                    "event print the top-K slate and whether a fresh candidate list was requested, and why.")
    run.add_argument("--server", required=True,
                     help="cloud address host:port; or several IP:port, comma-separated, or dns:///NAME:PORT (every "
                          "address of the name): calls are spread by gRPC's round_robin and a server reporting "
                          "NOT_SERVING (draining) is skipped")
    run.add_argument("--model", type=Path, required=True, help="SRM artifact folder (manifest.json + model file)")
    run.add_argument("--user", required=True, help="user id sent to the cloud")
    run.add_argument("--events", type=Path, required=True,
                     help="text file with one item id per line, oldest first ('#' comments and blank lines skipped)")
    run.add_argument("--history", type=Path, default=None,
                     help="optional file (same format as --events) with the user's past, known before the replay")
    run.add_argument("--data", type=Path, default=None,
                     help="the prepared dataset folder the model was trained on: print item titles beside the ids")
    run.add_argument("--policy", type=_policy, default=BEST_POLICY,
                     help=f"request policy: {usages()} (default {BEST_POLICY})")
    run.add_argument("--slate-size", type=int, default=10, help="K, items shown per slate (default 10)")
    run.add_argument("--num-candidates", type=int, default=50, help="N, candidates asked from the cloud (default 50)")
    run.add_argument("--fusion", default=BEST_FUSION.rule, choices=RULES,
                     help=f"fusion rule: reference is -(j+1)/L + (p_j - 0.5), linear weighs the two norms below "
                          f"(default {BEST_FUSION.rule})")
    run.add_argument("--alpha", type=float, default=BEST_FUSION.alpha,
                     help=f"LLM weight of the linear fusion rule (default {BEST_FUSION.alpha})")
    run.add_argument("--llm-norm", default=BEST_FUSION.llm_norm, choices=LLM_NORMS.names(),
                     help="the LLM term of the linear rule: its rank -(j+1)/L, the softmax of its scores, or the "
                          f"scores themselves as log-probabilities (default {BEST_FUSION.llm_norm})")
    run.add_argument("--srm-norm", default=BEST_FUSION.srm_norm, choices=SRM_NORMS.names(),
                     help="the SRM term of the linear rule: sigmoid(logit) - 0.5, its rank -(r+1)/L, or the logit "
                          "itself; logprob + logit is a product of the two models' probabilities "
                          f"(default {BEST_FUSION.srm_norm})")
    run.add_argument("--measure", default=None, choices=MEASURES.names(),
                     help="score the request policy acts on: an order inconsistency between the SRM and the "
                          "LLM over the cached list (lsc4rec = the reference footrule + consumed-slot penalty), "
                          "regret = how much of the SRM's top-K over the whole catalogue the list lacks, or "
                          "est-regret = the same from the cached list and the user encoder's partition head, with no "
                          f"catalogue (default: {BEST_MEASURE} for a model with its item table, {FREE_MEASURE} for a "
                          f"catalogue-free user encoder, {FREE_MEASURE_NO_HEAD} for one without a partition head)")
    run.add_argument("--backend", default="auto", choices=("auto", "onnx", "executorch", "native"),
                     help="runtime backend (default: by the artifact's format; a .pte runs on the native library "
                          "when `make native` built it)")
    run.add_argument("--vocab-hash", default=None, help="refuse a model made for another catalogue")
    run.add_argument("--token", default="", help="bearer token for the cloud (default none)")
    run.add_argument("--timeout", type=float, default=2.0, help="deadline of one cloud call in seconds (default 2)")
    run.add_argument("--check-update", action="store_true",
                     help="ask the cloud for a newer SRM first; download, verify and switch to it")
    run.add_argument("--updates-dir", type=Path, default=None,
                     help="where downloaded model versions go (default: <model>/../updates)")
    run.add_argument("--seed", type=int, default=0, help="seed of random policies (default 0)")
    add_json_flag(run)
    run.set_defaults(func=handler("device.runtime.cli", "run_main"))

    bench = groups["device"].add_parser(
        "bench", help="per-event latency of re-rank + fusion + consistency + policy, and process memory",
        description="Time DeviceSession.on_event without the network (re-rank N candidates with the SRM, fuse, "
                    "score consistency, decide) and report p50/p99, resident memory, and whether torch is loaded.")
    bench.add_argument("--model", type=Path, required=True,
                       help="SRM artifact folder (manifest.json + model file), e.g. what `lsc4rec export srm` wrote")
    bench.add_argument("--events", type=int, default=3000, help="timed events (default 3000)")
    bench.add_argument("--num-candidates", type=int, default=50, help="candidates re-ranked per event (default 50)")
    bench.add_argument("--history", type=int, default=100, help="length of the user's history before timing (default 100)")
    bench.add_argument("--policy", type=_policy, default="budget:0.1",
                       help=f"request policy: {usages()} (default budget:0.1)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the synthetic stream (default 0)")
    bench.add_argument("--measure", default="lsc4rec", choices=MEASURES.names(),
                       help="consistency measure timed with each event (regret scores the whole catalogue)")
    bench.add_argument("--catalogue", type=int, default=0, metavar="N",
                       help="items a catalogue-free (user-encoder) model's stand-in cloud draws from, e.g. 1000000 "
                            "(0 = the model's num_items); a model with its own table uses its num_items")
    add_json_flag(bench)
    bench.set_defaults(func=handler("device.runtime.cli", "bench_main"))


def read_events(path: Path) -> list[int]:
    """Item ids, one per line (first whitespace-separated field); raises DataFormatError naming the line."""
    items = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataFormatError(path, 0, "events", f"cannot read: {exc}") from None
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            items.append(int(text.split()[0]))
        except ValueError:
            raise DataFormatError(path, n, "item", f"{text.split()[0]!r} is not an integer item id") from None
    return items


def run_main(args: argparse.Namespace) -> int:
    from device.runtime.artifact import ModelHolder, load_reranker
    from device.runtime.client import ClientConfig, CloudClient
    from device.runtime.session import DeviceSession, SessionConfig

    events = read_events(args.events)
    model = load_reranker(args.model, args.vocab_hash, args.backend)
    holder = ModelHolder(model, args.updates_dir or args.model.parent / "updates", backend=args.backend)
    if isinstance(model, UserEncoder):  # catalogue-free: the cloud sends item vectors
        measure = args.measure or (FREE_MEASURE if model.has_partition else FREE_MEASURE_NO_HEAD)
    else:
        measure = args.measure or BEST_MEASURE
    titles = (read_titles(args.data, holder.manifest.num_items, holder.manifest.vocab_hash)  # may know more items
              if args.data else None)
    config = SessionConfig(user_id=args.user, slate_size=args.slate_size, num_candidates=args.num_candidates,
                           fusion=FusionConfig(rule=args.fusion, alpha=args.alpha, llm_norm=args.llm_norm,
                                               srm_norm=args.srm_norm), measure=measure)
    # the cloud's catalogue may have grown past the model's: its new items are ranked as untrained, not refused
    with CloudClient(ClientConfig(address=args.server, timeout_s=args.timeout, token=args.token),
                     num_items=None) as client:
        if args.check_update:
            update = holder.update_from_cloud(client)
            _show({"model_update": update.status, "model_version": update.version, "reason": update.reason}, args.json)
        past = tuple(read_events(args.history)) if args.history else ()
        session = DeviceSession(config, holder, parse_policy(args.policy, args.seed),
                                lambda: time.monotonic() * 1e3, source=client, history=past)
        for n, item in enumerate(events, 1):
            start = time.perf_counter()
            result = session.on_event(item)
            row = {"event": n, "item": item, "slate": list(result.slate.items), "stale": result.slate.stale,
                   "mode": result.slate.mode, "wanted": result.decision.request, "reason": result.decision.reason,
                   "requested": result.requested, "request_ok": result.request_ok, "note": result.note,
                   "score": None if np.isnan(result.decision.score) else round(result.decision.score, 4),
                   "ms": round((time.perf_counter() - start) * 1e3, 3)}
            if titles is not None:
                row.update(item_title=_title(titles, item), slate_titles=[_title(titles, i) for i in result.slate.items])
            _show(row, args.json)
        summary = {"events": len(events), "requests": session.requests_sent, "failures": session.failures,
                   "request_rate": session.requests_sent / max(len(events), 1),
                   "request_bytes": client.stats.request_bytes, "response_bytes": client.stats.response_bytes,
                   "model_version": holder.manifest.version}
    emit(summary, args.json, title="summary")
    return 0


def read_titles(folder: Path, num_items: int, vocab_hash: str | None = None) -> list[str]:
    """Item titles of a prepared dataset folder, indexed by dense id (index 0 unused). The dataset must be the
    model's catalogue (the same number of items) or, given the model's `vocab_hash`, a grown one (the model's items
    first: the cloud may serve items added since), or the titles would name other items."""
    from shared.data.catalog import raw_vocab_hash
    from shared.data.dataset import load_dataset

    items = load_dataset(folder).items
    grown = (vocab_hash is not None and len(items) > num_items
             and raw_vocab_hash([i.raw_id for i in items[:num_items]]) == vocab_hash)
    if len(items) != num_items and not grown:
        raise InvalidArgumentError("data", str(folder), f"has {len(items)} items but the model's catalogue has "
                                                        f"{num_items}: not the dataset the model was trained on")
    return [""] + [item.title for item in items]


def _title(titles: list[str], item: int) -> str:
    """An item's title, or its id when --data predates it (a newer item the cloud served)."""
    return titles[item] if item < len(titles) else f"item id {item}"


def _show(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row, default=str), flush=True)
        return
    if "event" not in row:
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return
    sent = ("sent, ok" if row["request_ok"] else f"sent, FAILED ({row['note']})") if row["requested"] else (
        f"wanted, not sent ({row['note']})" if row["wanted"] or row["note"] else "no")
    stale = " STALE" if row["stale"] else ""
    if "slate_titles" in row:
        shown = "; ".join(f"{i} {t}" for i, t in zip(row["slate"], row["slate_titles"]))
        print(f"#{row['event']:<3} item {row['item']} {row['item_title']}\n      slate{stale}: {shown}\n"
              f"      request: {sent} - {row['reason']}", flush=True)
        return
    print(f"#{row['event']:<3} item {row['item']:<5} slate {row['slate']}{stale}\n"
          f"      request: {sent} - {row['reason']}", flush=True)


def bench_figures(model: Path, events: int = 3000, num_candidates: int = 50, history: int = 100,
                  policy: str = "budget:0.1", seed: int = 0, measure: str = "lsc4rec", catalogue: int = 0) -> dict:
    """Per-event latency (µs) of on_event with no network, its parts, and this process's memory.

    "event": the whole on_event (SRM re-rank of N candidates + fusion + consistency + policy);
    "overhead": the same with a free stand-in SRM (what the session adds); "srm": the model alone (for a
    catalogue-free user encoder: one incremental update). A new user session starts every 400 events (histories of
    100..500 items). A user encoder is given each consumed item's vector with the item (timed with the event) and
    each list's vectors, from a stand-in cloud over `catalogue` items (0 = the model's num_items).
    """
    from device.runtime.artifact import load_reranker

    reranker = load_reranker(model)
    free = isinstance(reranker, UserEncoder)  # catalogue-free: any catalogue size, vectors from a stand-in cloud
    items = catalogue or reranker.manifest.num_items
    if items < 2 * num_candidates + history + 400:
        raise DataFormatError(model, 0, "num_items", f"catalogue of {items} is too small")
    event_us, event_cpu_us, wanted = _time_events(reranker, parse_policy(policy, seed), events, num_candidates,
                                                  history, seed, measure, items)
    srm_us = []
    if free:  # the incremental update alone: one encoder step
        state, vector = reranker.new_state(), _StandInVectors(reranker).rows([1]).floats()[0]  # a cloud's row
        for _ in range(events):
            start = time.perf_counter()
            state.append(vector)
            srm_us.append((time.perf_counter() - start) * 1e6)
        overhead_us = overhead_cpu_us = [float("nan")]
    else:
        overhead_us, overhead_cpu_us, _ = _time_events(_FreeReranker(reranker), parse_policy(policy, seed), events,
                                                       num_candidates, history, seed, measure, items)
        hist = np.arange(1, reranker.history_length + 1, dtype=np.int64)[None]
        cands = np.arange(1, num_candidates + 1, dtype=np.int64)[None]
        for _ in range(events):
            start = time.perf_counter()
            reranker.score(hist, cands)
            srm_us.append((time.perf_counter() - start) * 1e6)
    figures = {"events": events, "num_candidates": num_candidates, "request_rate": wanted / events, "policy": policy,
               "measure": measure,
               "model": reranker.manifest.model_name, "model_version": reranker.manifest.version,
               "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"), "torch_loaded": "torch" in sys.modules,
               "onnxruntime": getattr(sys.modules.get("onnxruntime"), "__version__", None)}
    for name, samples in (("event", event_us), ("event_cpu", event_cpu_us), ("overhead", overhead_us),
                          ("overhead_cpu", overhead_cpu_us), ("srm", srm_us)):
        arr = np.asarray(samples)
        figures.update({f"{name}_p50_us": float(np.percentile(arr, 50)), f"{name}_p99_us": float(np.percentile(arr, 99)),
                        f"{name}_mean_us": float(arr.mean())})
    return figures


class _FreeReranker:
    """Same manifest, no model: fixed pseudo-random logits (isolates the session's own cost)."""

    def __init__(self, inner):
        self.manifest, self.history_length = inner.manifest, inner.history_length
        self._logits = np.random.default_rng(0).normal(size=4096).astype(np.float32)

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self._logits[candidates % self._logits.size]


def _time_events(reranker, policy, events: int, num_candidates: int, history: int,
                 seed: int, measure: str = "lsc4rec", num_items: int = 0) -> tuple[list, list, int]:
    """on_event wall and thread-CPU times (µs, after 200 warm-up events); how many decisions asked for a list.

    onnxruntime with one intra-op thread runs in the calling thread, so the CPU time is the work itself,
    free of the time the process spent descheduled on a busy machine.
    """
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.records import Candidate, CandidateResponse

    rng = np.random.default_rng(seed)
    size = num_items or reranker.manifest.num_items
    cloud = _StandInVectors(reranker) if isinstance(reranker, UserEncoder) else None

    def fresh(exclude: list[int], missing=()) -> CandidateResponse:
        blocked, picks = set(exclude), []
        while len(picks) < num_candidates:
            item = int(rng.integers(1, size + 1))
            if item not in blocked:
                blocked.add(item)
                picks.append(item)
        vectors = None if cloud is None else cloud.rows(picks + list(missing))
        return CandidateResponse(tuple(Candidate(i, -float(n)) for n, i in enumerate(picks)), "bench", 0.0, "",
                                 vectors)

    samples, cpu, wanted, session = [], [], 0, None
    for n in range(events + 200):
        if n % 400 == 0:
            past = list(dict.fromkeys(int(i) for i in rng.integers(1, size + 1, history)))
            session = DeviceSession(SessionConfig(user_id=f"bench-{n}", num_candidates=num_candidates,
                                                  measure=measure), reranker,
                                    policy, lambda: 0.0, history=tuple(past), candidates=fresh(past, past[-64:]))
        shown = set(session.slate().items)
        item = int(rng.integers(1, size + 1))
        while item in shown:
            item = int(rng.integers(1, size + 1))
        arriving = None if cloud is None else cloud.rows([item])  # made by the stand-in cloud: not timed
        start_cpu = time.thread_time()  # a syscall of a few µs: kept outside the wall-clock window
        start = time.perf_counter()
        if arriving is not None:  # the item's vector comes with it (catalogue-free device)
            session.receive_vectors(arriving)
        result = session.on_event(item)
        elapsed = time.perf_counter() - start
        elapsed_cpu = time.thread_time() - start_cpu
        if n >= 200:
            samples.append(elapsed * 1e6)
            cpu.append(elapsed_cpu * 1e6)
            wanted += result.decision.request
        if session.needs_refresh:
            session.apply_candidates(fresh(session.history))  # the network is not timed
    return samples, cpu, wanted


class _StandInVectors:
    """The cloud's side for a benchmark of a catalogue-free device: int8 rows drawn per id, never stored (so a
    1,000,000-item catalogue costs nothing here), tagged with the device model's version."""

    def __init__(self, encoder):
        self.version, self.dim = encoder.manifest.version, encoder.dim

    def rows(self, ids) -> ItemVectors:
        ids = np.asarray(list(dict.fromkeys(ids)), dtype=np.int64)
        values = np.stack([np.random.default_rng(int(i)).integers(-127, 128, self.dim, dtype=np.int8) for i in ids])
        return ItemVectors(self.version, self.dim, ids, values, np.full(len(ids), 0.01, dtype=np.float32))


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak; not getrusage's
    ru_maxrss, which a process started from a larger one, fork + exec, inherits from its parent); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def bench_main(args: argparse.Namespace) -> int:
    figures = bench_figures(args.model, args.events, args.num_candidates, args.history, args.policy, args.seed,
                            args.measure, args.catalogue)
    figures["seed"] = args.seed
    emit(figures, args.json, title="device bench (per event, no network)")
    return 0
