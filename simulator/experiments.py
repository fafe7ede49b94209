"""An experiment: load data and models, calibrate budgets, run the policy x fusion x budget x seed grid."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from device.runtime.consistency import MEASURES, ListContext
from device.runtime.policies import POLICIES, Calibration, PolicySpec
from shared.config import to_dict
from shared.data.cold import draw_cold_items, item_counts, recorded_draw
from shared.data.dataset import load_dataset
from shared.errors import ConfigError
from shared.records import CandidateRequest
from shared.sequences import pad_left
from simulator.cloud_link import GeneratorSource, MemoSource, VectorSource
from simulator.config import MATCHED_RANDOM, SimConfig, check_against_data
from simulator.device_adapter import MAX_REQUEST_HISTORY, MemoReranker
from simulator.engine import Replay, RunResult, Streams, build_streams
from simulator.figures import POPULARITY, by_popularity, device_only_ranks, summarize
from simulator.models import SharedEncoder, load_generator, load_reranker
from simulator.network import NetworkModel


@dataclass
class World:
    """Everything a run needs, loaded once: data, streams, models, the cloud link."""

    config: SimConfig
    dataset: object
    streams: Streams
    generator: object
    reranker: object
    source: object  # CandidateSource used by the replays
    scorer: MemoReranker  # the SRM's scores, memoised (calibration, device-only; re-training swaps its model)
    device: object = None  # what every session holds: `scorer`, or a catalogue-free device's user encoder
    vectors: object = None  # a catalogue-free device's item vector table (shared.vector_table.VectorTable)


def load_world(config: SimConfig, source=None, generator=None, reranker=None, dataset=None) -> World:
    """Check the config against the data first, then load models (stand-ins when no folder is given)."""
    dataset = dataset if dataset is not None else load_dataset(Path(config.data))
    check_against_data(config, dataset.sequences(), dataset.num_items)
    streams = build_streams(dataset, config.stream_length, config.cloud_lag, config.max_users)
    if config.cold_seed >= 0:
        check_cold_models(config)
    if generator is None and source is None:
        generator = load_generator(config.llm, dataset, streams.cloud_seen)
    if reranker is None:
        reranker = load_reranker(config.srm, config.srm_format, dataset, streams.past)
    vectors = getattr(reranker, "table", None)  # a catalogue-free device (simulator.models.EncoderCatalogue)
    if source is None:
        source = MemoSource(GeneratorSource(generator))
    if isinstance(source, VectorSource):  # another world's lists (their memo is shared), not its vectors
        source = source.source
    if vectors is not None and isinstance(source, MemoSource):  # in process: the vectors of this model's version,
        source = VectorSource(source, vectors)  # as the server sends them (a gRPC source gets them from the server)
    scorer = MemoReranker(reranker, dataset.num_items)
    device = scorer if vectors is None else SharedEncoder(reranker.encoder)
    return World(config, dataset, streams, generator, reranker, source, scorer, device, vectors)


def make_replay(world: World, streams: Streams | None = None, seed: int = 0, retrain=None,
                progress: bool = True) -> Replay:
    cfg = world.config
    streams = streams if streams is not None else world.streams
    # the whole world's span, also for a subset of its streams (a Ray shard): outages fall at the same times
    network = NetworkModel(cfg.network, seed, world.streams.span, world.dataset.num_users, cfg.stream_length)
    return Replay(streams, world.source, world.scorer, device=world.device, vectors=world.vectors,
                  num_candidates=cfg.num_candidates,
                  slate_size=cfg.slate_size, alpha=cfg.alpha, srm_norm=cfg.srm_norm, llm_norm=cfg.llm_norm,
                  network=network,
                  deliver=cfg.network.deliver, retrain=retrain, progress=progress, measure=cfg.measure)


def _hist(seq) -> tuple[int, ...]:
    return tuple(int(i) for i in seq[-MAX_REQUEST_HISTORY:])


def warm(world: World, streams: Streams | None = None, progress: bool = True) -> None:
    """In-process only: generate every list a replay can ask for (each history prefix) in big batches,
    and score the catalogue for every history a device can hold. Protocol B fixes both sets, so every
    run of the grid afterwards is lookups; results equal computing on demand (checked for the SRM)."""
    cfg, s = world.config, streams if streams is not None else world.streams
    reqs, hists = [], []
    for user, seen, past, items in zip(s.users, s.cloud_seen, s.past, s.items):
        reqs.append(CandidateRequest(str(int(user)), _hist(seen), cfg.num_candidates))
        hists.append(past)
        for t in range(1, len(items) + 1):  # requests follow a revealed item
            hist = np.concatenate([past, items[:t]])
            reqs.append(CandidateRequest(str(int(user)), _hist(hist), cfg.num_candidates))
            hists.append(hist)
    chunk = 128
    answers = []
    for start in tqdm(range(0, len(reqs), chunk), desc="cloud lists", unit="batch", disable=not progress):
        answers += world.source.fetch(reqs[start:start + chunk])
    world.scorer.warm(hists, progress=progress)
    sample = range(0, len(answers), max(1, len(answers) // 20))
    world.scorer.check([hists[i] for i in sample],
                       [np.array([c.item for c in answers[i].candidates], dtype=np.int64) for i in sample])


def calibrate(world: World, budgets, progress: bool = True) -> dict[float, dict]:
    """Thresholds of the budget policy from a calibration replay on the past (no stream event).

    The stream is moved S items back, so calibration sees only interactions before every live event.
    Every inconsistency score a device can meet there is tabulated once (user, step, age of its list);
    replaying the policy for a threshold is then a walk over the table, and bisection finds the
    threshold whose realised request rate is closest to each budget (ideal network assumed).
    """
    cfg = world.config
    pseudo = build_streams(world.dataset, cfg.stream_length, cfg.cloud_lag, cfg.max_users, shift=cfg.stream_length)
    if cfg.calibration_users and cfg.calibration_users < len(pseudo.users):
        pick = np.random.default_rng(0xCA1).choice(len(pseudo.users), cfg.calibration_users, replace=False)
        pseudo = pseudo.subset(np.sort(pick))
    if cfg.mode == "inprocess":
        warm(world, pseudo, progress)
    source = world.source if isinstance(world.source, MemoSource) else MemoSource(world.source)
    table = _score_table(world, pseudo, source)

    def walk(threshold: float) -> tuple[float, list[float]]:
        """(request rate, the scores the policy met) of the threshold policy on the calibration replay."""
        requests, met = 0, []
        for scores, forced in table:  # per user: (S, S + 1) score and forced-request tables
            key = 0
            for t in range(scores.shape[0]):
                met.append(scores[t, key])
                if forced[t, key] or scores[t, key] >= threshold:
                    requests += 1
                    key = t + 1
        return requests / max(1, sum(len(s) for s, _ in table)), met

    def rate(threshold: float) -> float:
        return walk(threshold)[0]

    values = np.concatenate([s[np.isfinite(s)] for s, _ in table])
    out = {}
    for budget in budgets:
        lo, hi = float(values.min()) - 1e-6, float(values.max()) + 1e-6  # rate(lo) ~ 1, rate(hi) ~ 0
        best = (abs(rate(hi) - budget), hi)
        for _ in range(cfg.calibration_iters):
            mid = (lo + hi) / 2
            r = rate(mid)
            best = min(best, (abs(r - budget), mid))
            lo, hi = (mid, hi) if r > budget else (lo, mid)
        realised, met = walk(best[1])
        met = np.asarray(met, dtype=np.float64)
        # the distribution of the scores the policy met, as percentiles (warm start of an adaptive budget)
        out[budget] = {"threshold": best[1], "calibration_rate": realised, "calibration_users": len(pseudo.users),
                       "score_percentiles": np.percentile(met[np.isfinite(met)], np.arange(101)).tolist()}
        if progress:
            print(f"calibrated budget {budget:.0%}: threshold {best[1]:.3f} (calibration rate "
                  f"{realised:.3f})", file=sys.stderr)
    return out


def _score_table(world: World, pseudo: Streams, source) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user: scores[t, k] = inconsistency after revealing step t when the cached list came from the
    request after step k (k = 0: the initial list); forced[t, k] = fewer than K candidates remain.
    Scored by the device runtime's `Measure`, the very code a DeviceSession scores with after each event."""
    cfg = world.config
    measure = MEASURES.get(cfg.measure, field="measure")
    table = []
    for u, user in enumerate(pseudo.users):
        past, items, seen = pseudo.past[u], pseudo.items[u], pseudo.cloud_seen[u]
        hists = [seen] + [np.concatenate([past, items[:t]]) for t in range(1, len(items) + 1)]
        reqs = [CandidateRequest(str(int(user)), _hist(h), cfg.num_candidates) for h in hists]
        lists = [np.array([c.item for c in r.candidates], dtype=np.int64) for r in source.fetch(reqs)]
        steps = len(items)
        scores = np.full((steps, steps + 1), np.inf)
        forced = np.zeros((steps, steps + 1), dtype=bool)
        consumed = np.zeros(world.dataset.num_items + 1, dtype=bool)
        consumed[past] = True
        # per cached list k: for each step since it, the consumed item's slot in the list and its SRM rank among the
        # list's items unconsumed just before it (neither depends on the later steps, so each is found once)
        since_slots, since_ranks = [[] for _ in lists], [[] for _ in lists]
        if measure.needs_context:  # the SRM's scores before the first step (the history of the initial list)
            prev_row = world.scorer.catalogue_scores(pad_left([past], world.scorer.history_length))[0]
        for t in range(steps):
            if measure.needs_context:  # what the SRM believed, and what was consumed, just before step t
                item = items[t]
                for k in range(t + 1):
                    cands = lists[k]
                    hit = np.flatnonzero(cands == item)
                    since_slots[k].append(int(hit[-1]) if hit.size else -1)
                    left = cands[~consumed[cands]]
                    rank = -1
                    if item in left:
                        order = left[(-prev_row[left].astype(np.float64)).argsort(kind="stable")]
                        rank = int(np.flatnonzero(order == item)[0])
                    since_ranks[k].append(rank)
            consumed[items[t]] = True
            hist = np.concatenate([past, items[:t + 1]])
            window = pad_left([hist], world.scorer.history_length)
            table_row = world.scorer.catalogue_scores(window)[0]
            partition = world.scorer.log_partition(window) if measure.needs_partition else None
            prev_row = table_row
            if measure.needs_catalogue:  # float64 logits by id (id 0: padding); what may still be shown
                logits = np.where(np.isfinite(table_row), table_row, 0.0).astype(np.float64)
                showable = ~consumed
                showable[0] = False
            for k in range(t + 1):
                cands = lists[k]
                alive = cands[~consumed[cands]]
                if alive.size == 0:
                    forced[t, k] = True
                    continue
                if measure.needs_context:  # what the device holds (as DeviceSession._context_score builds it)
                    since = items[k:t + 1]
                    held, in_list = np.zeros(0), np.zeros(0, dtype=bool)
                    if measure.needs_held:
                        extra = np.setdiff1d(lists[0], cands)
                        extra = extra[~consumed[extra]]
                        held = np.concatenate([table_row[alive], table_row[extra]]).astype(np.float64)
                        in_list = np.concatenate([np.ones(alive.size, dtype=bool), np.zeros(extra.size, dtype=bool)])
                    scores[t, k] = measure.of_context(ListContext(
                        table_row[alive].astype(np.float64), since.astype(np.int64),
                        np.asarray(since_slots[k], dtype=np.int64), cands.size,
                        cfg.slate_size, held, in_list, np.asarray(since_ranks[k], dtype=np.int64), partition))
                elif measure.needs_catalogue:
                    scores[t, k] = measure.of_catalogue(logits, alive, showable, cfg.slate_size)
                else:
                    scores[t, k] = measure.of_list(table_row[alive].astype(np.float64),
                                                   num_invalid=max(cfg.num_candidates - alive.size, 0),
                                                   k=cfg.slate_size)
                forced[t, k] = alive.size < cfg.slate_size
        table.append((scores, forced))
    return table


def plan(config: SimConfig) -> list[dict]:
    """The grid, in the order it runs; "random-matched" rows take the rate of the calibrated run before them.

    Each policy runs once per seed and fusion, or once per budget if it is `budgeted`; a policy whose decisions
    are not random draws (`per_seed` False) runs for the first seed only when the network drops nothing.
    """
    runs = []
    net = config.network
    once = config.deterministic_once and net.loss == 0 and not net.outages
    for seed in config.seeds:
        for fusion in config.fusions:
            for name in config.policies:
                policy = POLICIES.get(name, field="policies")
                twins = policy.calibrated and config.matched_random
                budgets = config.budgets if policy.budgeted else (None,)
                if once and seed != config.seeds[0] and not policy.per_seed:
                    if twins:  # random requests do differ by seed
                        runs += [{"policy": MATCHED_RANDOM, "fusion": fusion, "seed": seed, "budget": b}
                                 for b in budgets]
                    continue
                for budget in budgets:
                    runs.append({"policy": name, "fusion": fusion, "seed": seed, "budget": budget})
                    if twins:
                        runs.append({"policy": MATCHED_RANDOM, "fusion": fusion, "seed": seed, "budget": budget})
    for run in runs:
        budget = "" if run["budget"] is None else f"-b{round(run['budget'] * 100):02d}"
        run["id"] = f"{run['policy']}-{run['fusion']}{budget}-s{run['seed']}"
    return runs


def policy_for(run: dict, config: SimConfig, calibration: dict, done: dict) -> PolicySpec:
    """The policy of one planned run: its budget and seed, the config's fixed threshold, and for a calibrated
    policy what the calibration replay found for its budget; a "random-matched" run takes its twin's realised rate."""
    name, budget, seed = run["policy"], run["budget"], run["seed"]
    if name == MATCHED_RANDOM:  # the twin: the grid's calibrated policy (the built-in one is "budget")
        twin = next(p for p in config.policies if POLICIES.get(p).calibrated)
        twin_id = run["id"].replace(MATCHED_RANDOM, twin, 1)
        if twin_id not in done:  # deterministic twin run for the first seed only
            twin_id = twin_id.rsplit("-s", 1)[0] + f"-s{config.seeds[0]}"
        return PolicySpec("random", rate=done[twin_id]["request_rate"], seed=seed)
    found = None
    if POLICIES.get(name, field="policies").calibrated:
        cal = calibration[budget]
        found = Calibration(cal["threshold"], tuple(cal["score_percentiles"]), config.budget_mode == "adaptive")
    return PolicySpec(name, rate=budget, seed=seed, threshold=config.threshold, calibration=found)


def run_one(world: World, run: dict, policy: PolicySpec, initial, retrain=None, progress=True) -> RunResult:
    world.scorer.set_model(world.reranker)  # every run starts from the deployed model
    replay = make_replay(world, seed=run["seed"], retrain=retrain, progress=progress)
    result = replay.run(policy, run["fusion"], run["seed"], initial=initial)
    result.summary = summarize(result.rows, world.config.slate_size)
    result.summary["model_updates"] = replay.updates
    return result


def device_only(world: World) -> dict:
    cfg = world.config
    ranks = device_only_ranks(world.streams, world.scorer, world.scorer.history_length,
                              world.dataset.num_items, cfg.slate_size)
    rows = {"rank": ranks.ravel(), "requested": np.zeros(ranks.size, bool), "delivered": np.zeros(ranks.size, bool),
            "latency_ms": np.full(ranks.size, np.nan), "stale": np.zeros(ranks.size, bool),
            "bytes_up": np.zeros(ranks.size), "bytes_down": np.zeros(ranks.size),
            "user": np.repeat(world.streams.users, ranks.shape[1])}
    counts = training_counts(world)
    return {**summarize(rows, cfg.slate_size),
            POPULARITY: by_popularity(world.streams.items[:, :ranks.shape[1]].ravel(), ranks.ravel(), counts,
                                      new_items=cold_items(world))}


def cold_items(world: World) -> np.ndarray:
    """Protocol C's cold draw of the world's config (empty without one)."""
    config = world.config
    if config.cold_seed < 0:
        return np.zeros(0, dtype=np.int64)
    return draw_cold_items(world.dataset.num_items, config.cold_fraction, config.cold_seed)


def training_counts(world: World) -> np.ndarray:
    """(N + 1,) interactions per item in the device's training data: protocol B's past, minus protocol C's cold items."""
    counts = item_counts(world.streams.past, world.dataset.num_items)
    counts[cold_items(world)] = 0
    return counts


def check_cold_models(config: SimConfig) -> None:
    """Protocol C: the LLM and the SRM must have been trained without this cold draw, or its items leak."""
    if config.llm:
        trained = json.loads((Path(config.llm) / "config.json").read_text())["train"]
        recorded_draw("cold-stream", config.cold_seed, config.cold_fraction, trained, f"llm {config.llm}")
    if config.srm:
        ckpt = Path(config.srm) / "srm.pt"
        if not ckpt.is_file():
            raise ConfigError("srm", config.srm, "protocol C needs the SRM's checkpoint (srm.pt) beside its export, "
                                                 "to check that it was trained without the cold items")
        from device.training.artifacts import load_checkpoint

        _, record = load_checkpoint(ckpt)
        recorded_draw("cold-stream", config.cold_seed, config.cold_fraction, record, f"srm {ckpt}")


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_jsonable))
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def config_record(config: SimConfig) -> dict:
    return to_dict(config)
