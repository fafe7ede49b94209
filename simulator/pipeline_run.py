"""One pipeline run, stage by stage: the data, the item vectors, the LLM, the SRMs (independent, then cooperative),
their ONNX exports and the published model; then the in-process grid, the independent SRM beside it, the replay of
every user through gRPC device clients against a real `lsc4rec cloud serve`, and the headline table."""
from __future__ import annotations

import json
import time
from pathlib import Path

from shared.errors import LSC4RecError
from simulator.config import HEADLINE_POLICY
from simulator.experiments import config_record, load_world
from simulator.pipeline_plan import Commands, Plan, check_data, check_options, sim_config, stage_settings
from simulator.pipeline_stages import Stages, run_cli
from simulator.report import _headline
from simulator.run import simulate
from simulator.server_proc import ServerProcess


def run(plan: Plan) -> dict:
    """Check the options, then every stage in order (finished ones reused); returns the summary."""
    began = time.perf_counter()
    commands = Commands(plan)
    check_options(plan, commands)
    created = not plan.out.exists()
    plan.out.mkdir(parents=True, exist_ok=True)
    stages = Stages(plan)
    try:
        arts = build_artifacts(plan, stages, commands)
    except LSC4RecError:
        if created and not any(plan.out.iterdir()):  # refused before anything was written: leave no trace
            plan.out.rmdir()
        raise
    results = simulate_all(plan, stages, arts)
    return headline(plan, results, arts, time.perf_counter() - began)


def build_artifacts(plan: Plan, stages: Stages, cmd: Commands) -> dict:
    """Data, LLM, SRMs and their ONNX exports, published into the models folder the server serves."""
    out, o = plan.out, plan.opts
    stages.run("data", plan.data_label, plan.data / "meta.json", plan.data_settings, plan.prepare,
               announce=plan.announce_data)
    check_data(plan)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if cmd.grounded:
        stages.run("embed", f"item vectors from their text ({o.encoder})", cmd.vectors,
                   stage_settings(plan, cmd.embed), lambda: run_cli(*cmd.embed, log=logs / "embed-items.log"),
                   after=("data",))
    stages.run("llm", f"train the {plan.llm_preset} LLM", cmd.llm / "config.json",
               stage_settings(plan, cmd.train_llm), lambda: run_cli(*cmd.train_llm, log=logs / "train-llm.log"),
               after=("data", "embed") if cmd.grounded else ("data",), reused=bool(o.llm))
    stages.run("srm_indep", f"train {plan.srm_name} (independent)", cmd.indep / "srm.pt",
               stage_settings(plan, cmd.train_indep),
               lambda: run_cli(*cmd.train_indep, log=logs / "train-srm-indep.log"),
               after=("data",), reused=bool(o.srm_indep))
    coop, made_by = cmd.coop, {cmd.indep: "srm_indep"}
    if o.coop:
        try:
            stages.run("srm_coop", f"train {plan.srm_name} (cooperative, on the LLM's lists)", coop / "srm.pt",
                       stage_settings(plan, cmd.train_coop),
                       lambda: run_cli(*cmd.train_coop, log=logs / "train-srm-coop.log"),
                       after=("llm", "srm_indep"), reused=bool(o.srm_coop))
            made_by[coop] = "srm_coop"
        except SystemExit as exc:  # say so plainly and go on with the independent model
            plan.say(f"cooperative training FAILED; the replay uses the independent {plan.srm_name} instead.\n{exc}")
            stages.timings["srm_coop_failed"] = str(exc).splitlines()[0]
            coop = cmd.indep
    for name, folder in (("independent", cmd.indep), ("cooperative", coop)):
        if name == "cooperative" and not o.coop:
            continue
        stages.run(f"export_{name}", f"export {name} {plan.srm_name} (ONNX, catalogue-free user encoder)",
                   folder / "user-encoder" / "manifest.json",
                   stage_settings(plan, cmd.export(folder)),
                   lambda f=folder: run_cli(*cmd.export(f), log=logs / f"export-{f.name}.log"),
                   after=(made_by[folder],))
    served = "export_cooperative" if o.coop else "export_independent"
    artifacts = [coop / "onnx", coop / "user-encoder"]
    stages.run("publish", f"publish the {'cooperative' if o.coop else 'independent'} {plan.srm_name}",
               cmd.models / ".published", {"artifacts": stage_settings(plan, [str(a) for a in artifacts])["command"]},
               lambda: _publish(artifacts, cmd.models), after=(served,))
    return {"llm": cmd.llm, "indep": cmd.indep, "coop": coop, "models": cmd.models, "vectors": cmd.vectors,
            "timings": stages.timings, "served": served}


def _publish(artifacts: list[Path], models: Path) -> None:
    from cloud.registry import publish  # a cloud module: imported when the stage runs

    for artifact in artifacts:
        publish(artifact, models)
    (models / ".published").write_text("\n".join(map(str, artifacts)))


def _cached(plan: Plan, stages: Stages, key: str, folder: Path, config, stamp: dict) -> dict | None:
    """A finished simulation of exactly this config and these models, if one is there."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if (metrics.get("status") == "complete" and metrics.get("config") == config_record(config)
            and stages.fresh(key, stamp)):
        plan.say(f"{folder.name}: cached ({path})")
        stages.current[key] = stamp
        return metrics
    return None


def _simulation(plan: Plan, stages: Stages, key: str, config, after: tuple[str, ...], **kw) -> dict:
    """One in-process simulation into OUT/<key>, reused when this config on these models already finished."""
    folder = plan.out / key
    stamp = stages.stamp({"config": config_record(config)}, after)
    metrics = _cached(plan, stages, key, folder, config, stamp)
    if metrics is None:
        metrics = simulate(config, folder, **kw)
        stages.record(key, stamp)
    return metrics


def simulate_all(plan: Plan, stages: Stages, arts: dict) -> dict:
    """The in-process grid (the report), the independent SRM beside it, then all users over gRPC."""
    after, policy = ("data", "llm", arts["served"]), HEADLINE_POLICY
    config = sim_config(plan, [], arts["coop"])
    world = load_world(config)
    grid = _simulation(plan, stages, "sim", config, after, world=world)
    indep = None
    if plan.opts.coop:
        # The independent SRM on the same cloud lists (the list memo is shared: no LLM call is repeated).
        indep_cfg = sim_config(plan, [f"policies=['{policy}', 'never']", "budgets=[0.2]", "seeds=[0]",
                                      "matched_random=false"], arts["indep"])
        indep = _simulation(plan, stages, "sim-indep", indep_cfg, ("data", "llm", "export_independent"),
                            world=load_world(indep_cfg, source=world.source))
    # Every user through real gRPC device clients against `lsc4rec cloud serve`, with the grid's 20% budget
    # policy (its calibration replay goes through the server too).
    server = ServerProcess(str(arts["llm"]), models=str(arts["models"]), dataset_dir=str(plan.data),
                           log=plan.out / "logs" / "serve.log").start()
    try:
        grpc_cfg = sim_config(plan, ["mode='grpc'", f"server='{server.address}'", f"policies=['{policy}']",
                                     "budgets=[0.2]", "fusions=['fusion']", "seeds=[0]", "device_only=false",
                                     "matched_random=false"], arts["coop"])
        remote = simulate(grpc_cfg, plan.out / "sim-grpc")  # its wall time includes loading the SRM and sessions
        remote["events_per_s"] = remote["runs"][0]["steps"] / remote["wall_s"]
    finally:
        server.stop()
    return {"grid": grid, "indep": indep, "grpc": remote}


def headline(plan: Plan, results: dict, arts: dict, wall_s: float) -> dict:
    """Write OUT/<summary_file> and print the headline table (or, with --json, the summary) on stdout."""
    out, grid, remote = plan.out, results["grid"], results["grpc"]
    policy = HEADLINE_POLICY
    local = next((r for r in grid["runs"] if r["id"] == f"{policy}-fusion-b20-s0"), None)
    over = remote["runs"][0]
    same = local is not None and all(local[k] == over[k] for k in ("ndcg@10", "hr@10", "mrr@10", "requests"))
    indep = None if results["indep"] is None else {
        r["fusion"]: r["ndcg@10"] for r in results["indep"]["runs"] if r["policy"] == policy}
    summary = {"headline": _headline(grid), "bars": {k: v["met"] for k, v in grid["bars"].items()},
               "grpc": {"users": remote["users"], "ndcg@10": over["ndcg@10"], "request_rate": over["request_rate"],
                        "events_per_s": remote["events_per_s"], "same_as_inprocess": same},
               "independent_srm_20%": indep, "timings_s": arts["timings"], "wall_s": wall_s}
    (out / plan.summary_file).write_text(json.dumps(summary, indent=1, default=str))
    if plan.as_json:
        print(json.dumps({**summary, "report": str(out / "sim" / "report.md")}, default=str))
        return summary
    print("\nsystem                                              rate    NDCG@10  HR@10")
    for row in summary["headline"]:
        print(f"{row['system']:<50} {row['request_rate']:6.3f}  {row['ndcg@10']:.4f}  {row['hr@10']:.4f}")
    if indep is not None:
        print(f"\nindependent {plan.srm_name} at 20% (fusion / SRM only): {indep}")
    print(f"gRPC replay: {remote['users']} users, NDCG@10 {over['ndcg@10']:.4f} at rate {over['request_rate']:.3f}, "
          f"{remote['events_per_s']:.0f} device events/s, identical to in-process: {same}")
    for name, met in summary["bars"].items():
        print(f"bar {name}: {'met' if met else 'NOT met' if met is False else 'not measured'}")
    print(f"report: {out / 'sim' / 'report.md'}; wall time {wall_s / 60:.1f} min")
    return summary
