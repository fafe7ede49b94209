"""`lsc4rec simulate`: run a preset's grid, write rows, metrics.json and report.md (Ctrl-C keeps what finished)."""
from __future__ import annotations

import csv
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np

from device.runtime.policies import POLICIES, PolicySpec
from shared.cli import emit
from shared.data.dataset import load_dataset
from shared.errors import ConfigError
from simulator.cloud_link import GrpcSource
from simulator.config import HEADLINE_POLICY, SimConfig, load_sim_config
from simulator.engine import ROW_FIELDS, RunResult
from simulator.experiments import (World, calibrate, cold_items, config_record, device_only, load_world, make_replay,
                                   plan, policy_for, run_one, training_counts, warm, write_json)
from simulator.figures import POPULARITY, by_popularity
from simulator.ray_backend import run_sharded
from simulator.report import _headline, aggregate, evaluate_bars, write_report
from simulator.retrain import make_retrainer
from simulator.server_proc import ServerProcess


def write_rows(path: Path, result: RunResult) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ROW_FIELDS)
        columns = [result.rows[f] for f in ROW_FIELDS]
        for values in zip(*columns):
            writer.writerow([f"{v:.4f}" if isinstance(v, (float, np.floating)) else v for v in values])
    tmp.replace(path)


def simulate(config: SimConfig, out: Path, progress: bool = True, world: World | None = None) -> dict:
    """Run the whole grid; metrics.json is rewritten after every run so an interruption loses little."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows").mkdir(exist_ok=True)
    write_json(out / "config.json", config_record(config))
    began = time.perf_counter()
    server = None
    if world is None:
        world, server = open_world(config)
    metrics = {"status": "running", "config": config_record(config), "runs": [], "protocol": "B",
               "users": int(len(world.streams.users)), "seeds": list(config.seeds),
               "stream_length": config.stream_length, "num_candidates": config.num_candidates,
               "slate_size": config.slate_size, "cloud_lag": config.cloud_lag, "mode": config.mode,
               "backend": config.backend, "generator": getattr(world.generator, "version", config.llm or "grpc"),
               "srm": world.scorer.version}
    current = "setup"
    try:
        runs = plan(config)
        if config.mode == "inprocess":
            current = "warm-up"
            warm(world, progress=progress)
        calibration = {}
        if any(r["policy"] in POLICIES and POLICIES.get(r["policy"]).calibrated for r in runs):
            current = "calibration"
            calibration = calibrate(world, config.budgets, progress)
        metrics["calibration"] = {str(k): v for k, v in calibration.items()}
        if config.device_only:
            current = "device-only"
            metrics["device_only"] = device_only(world)
        write_json(out / "metrics.json", metrics)
        runs += retrain_runs(config)
        done: dict[str, dict] = {}
        initial = None if config.mode == "grpc" else _initial(world)
        counts, cold = training_counts(world), cold_items(world)
        for number, run in enumerate(runs, start=1):
            current = run["id"]
            policy = policy_for(run, config, calibration, done)
            shown = policy.build()  # what the run's devices will hold: its label and fixed threshold, if any
            if progress:
                print(f"[{number}/{len(runs)}] {run['id']} ({shown.label()})", file=sys.stderr)
            result = execute(world, config, run, policy, initial, progress)
            summary = {**run, "label": shown.label(), "threshold": shown.threshold, **result.summary,
                       POPULARITY: by_popularity(result.rows["target"], result.rows["rank"], counts, new_items=cold)}
            done[run["id"]] = summary
            metrics["runs"].append(summary)
            if config.write_rows:
                write_rows(out / "rows" / f"{run['id']}.csv", result)
            write_json(out / "metrics.json", metrics)
        metrics["status"] = "complete"
    except KeyboardInterrupt:
        metrics["status"] = "interrupted"
        metrics["stopped_at"] = current
        print(f"interrupted during {current}; {len(metrics['runs'])} finished runs are in {out / 'metrics.json'}",
              file=sys.stderr)
        raise
    finally:
        metrics["wall_s"] = time.perf_counter() - began
        finish(metrics, out)
        if server is not None:
            server.stop()
    return metrics


def finish(metrics: dict, out: Path) -> None:
    metrics["aggregate"] = aggregate(metrics.get("runs", []))
    metrics["bars"] = evaluate_bars(metrics)
    write_json(out / "metrics.json", metrics)
    write_report(metrics, out)


def _initial(world: World):
    return make_replay(world, progress=False).initial_lists()


def execute(world: World, config: SimConfig, run: dict, policy: PolicySpec, initial, progress: bool) -> RunResult:
    if config.backend == "ray":
        return run_sharded(world, config, run, policy)
    retrain = None
    if run.get("retrain"):
        retrain = (config.retrain.every, make_retrainer(world, config))
    return run_one(world, run, policy, initial, retrain=retrain, progress=progress)


def retrain_runs(config: SimConfig) -> list[dict]:
    """With adaptive re-training on: the headline runs again, with the model refreshed on schedule."""
    if not config.retrain.every:
        return []
    budget = 0.2 if 0.2 in config.budgets else config.budgets[0]
    policy = HEADLINE_POLICY if HEADLINE_POLICY in config.policies else "never"
    out = []
    for fusion in [f for f in ("fusion", "srm") if f in config.fusions]:
        tag = f"-b{round(budget * 100):02d}" if policy != "never" else ""
        out.append({"policy": policy, "fusion": fusion, "seed": config.seeds[0],
                    "budget": budget if policy != "never" else None, "retrain": True,
                    "id": f"{policy}-{fusion}{tag}-s{config.seeds[0]}-retrain"})
    return out


def open_world(config: SimConfig):
    """Load the world; in grpc mode, start (or connect to) the cloud server and call it for real."""
    if config.mode != "grpc":
        return load_world(config), None
    dataset = load_dataset(Path(config.data))
    server = None
    address = config.server
    if not address:
        models = _published_encoder(config)  # a catalogue-free device's vectors come from the server's table
        server = ServerProcess(config.llm, models=models, dataset_dir=config.data).start()
        address = server.address
    source = GrpcSource(address, dataset.num_items, config.grpc_concurrency)
    world = load_world(config, source=source, dataset=dataset)
    world.generator = _Named(address)
    return world, _Closer(source, server)


def _published_encoder(config: SimConfig) -> str:
    """For srm_format = user-encoder: a models folder (a temp dir, removed at exit) holding the SRM's user encoder
    and its item vector table, published as `lsc4rec cloud publish` does; "" otherwise."""
    if config.srm_format != "user-encoder" or not config.srm:
        return ""
    import atexit
    import shutil
    import tempfile

    from cloud.registry import publish  # a cloud module: only this path needs it

    folder = Path(tempfile.mkdtemp(prefix="lsc4rec-models-"))
    atexit.register(shutil.rmtree, folder, True)
    source = Path(config.srm) / "user-encoder"
    publish(source if source.is_dir() else Path(config.srm), folder)
    return str(folder)


class _Named:
    def __init__(self, address):
        self.version = f"grpc://{address}"


class _Closer:
    def __init__(self, source, server):
        self.source, self.server = source, server

    def stop(self):
        self.source.close()
        if self.server is not None:
            self.server.stop()


#: Settings a sweep may vary: they change how devices fuse and request, not the world (data, models, streams),
#: so every setting replays the same streams against the same cloud lists.
SWEEPABLE = ("alpha", "srm_norm", "llm_norm", "measure", "threshold")


def parse_sweep(specs: list[str]) -> list[list[str]]:
    """`KEY=V1,V2` specs -> every combination, each a list of `KEY=V` overrides (first spec varies slowest)."""
    axes = []
    for spec in specs:
        key, _, values = spec.partition("=")
        key = key.strip()
        if key not in SWEEPABLE:
            raise ConfigError("--sweep", spec, f"can vary only {', '.join(SWEEPABLE)} (settings that keep the world)")
        if not values.strip():
            raise ConfigError("--sweep", spec, "give KEY=V1,V2,...")
        axes.append([f"{key}={v.strip()}" for v in values.split(",")])
    return [list(combo) for combo in product(*axes)]


def sweep_score(metrics: dict) -> dict:
    """The selection figure of a setting: fusion NDCG@10 of each budget of the budget policy, and their mean."""
    per_budget = {str(r["budget"]): r["ndcg@10"] for r in metrics["runs"]
                  if r["fusion"] == "fusion" and r["policy"] == HEADLINE_POLICY and r["budget"] is not None}
    mean = float(np.mean(list(per_budget.values()))) if per_budget else None
    return {"mean_fusion_ndcg@10": mean, "fusion_ndcg@10_by_budget": per_budget}


def sweep(preset: str, overrides: list[str], specs: list[str], out: Path, progress: bool = True) -> list[dict]:
    """Run the preset once per setting into OUT/<setting>/, sharing one world (the cloud lists are generated once);
    writes OUT/sweep.json with each setting's `sweep_score`, best first."""
    settings = parse_sweep(specs)
    results, world = [], None
    for n, setting in enumerate(settings, 1):
        config = load_sim_config(preset, overrides + setting)
        if config.mode != "inprocess" or config.backend != "local":
            raise ConfigError("--sweep", " ".join(specs), "runs in process with the local backend only")
        name = ",".join(setting)
        print(f"[sweep {n}/{len(settings)}] {name}", file=sys.stderr, flush=True)
        current = load_world(config) if world is None else load_world(
            config, source=world.source, generator=world.generator, reranker=world.reranker, dataset=world.dataset)
        world = world or current
        metrics = simulate(config, out / name, progress=progress, world=current)
        results.append({"setting": name, **sweep_score(metrics)})
    results.sort(key=lambda r: -1.0 if r["mean_fusion_ndcg@10"] is None else -r["mean_fusion_ndcg@10"])
    write_json(out / "sweep.json", {"preset": preset, "overrides": overrides, "sweep": specs, "results": results})
    return results


def main(args) -> int:
    """CLI entry of `lsc4rec simulate`."""
    overrides = list(args.overrides)
    for key, value in (("backend", args.backend), ("mode", args.mode), ("ray_address", args.ray_address)):
        if value:
            overrides.append(f'{key}="{value}"')
    if args.sweep:
        results = sweep(args.preset, overrides, args.sweep, Path(args.out), progress=not args.quiet)
        figures = {r["setting"]: None if r["mean_fusion_ndcg@10"] is None else round(r["mean_fusion_ndcg@10"], 5)
                   for r in results}
        emit({"best": results[0]["setting"], **figures, "sweep": str(Path(args.out) / "sweep.json")}, args.json,
             title="mean fusion NDCG@10 over the budgets of the budget policy, best first")
        return 0
    config = load_sim_config(args.preset, overrides)
    metrics = simulate(config, Path(args.out), progress=not args.quiet)
    figures = {"protocol": "B", "users": metrics["users"], "seed": list(config.seeds),
               "wall_s": round(metrics["wall_s"], 2), "report": str(Path(args.out) / "report.md")}
    for row in _headline(metrics):
        figures[f"{row['system']}: ndcg@10"] = round(row["ndcg@10"], 4)
        figures[f"{row['system']}: request_rate"] = round(row["request_rate"], 4)
    figures.update({f"bar {k}": v["met"] for k, v in metrics["bars"].items()})
    emit(figures, args.json, title=f"simulation ({config.mode}, {metrics['users']} users)")
    return 0
