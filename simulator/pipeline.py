"""`lsc4rec pipeline`: a user's own interaction file to the demo's report in one command.

The stages are the demo's (`make demo` is this pipeline applied to MovieLens-100K): read and prepare the data,
item text vectors, the cloud LLM, the device SRM (independent, then cooperative training on the LLM's lists),
ONNX export, publishing, a grid of in-process simulations, and a replay of every user through gRPC device
clients against a real `lsc4rec cloud serve` process. Every stage leaves a marker in OUT; a re-run skips what
is finished, and refuses a finished stage made with other settings (OUT/stages.json records them). The data is
read and checked before anything is trained: bad input ends with exit code 2 and one line naming the file,
line and field.

Module import stays light (it registers the subcommand); the stages import what they need when they run.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import time
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shared.errors import InvalidArgumentError, LSC4RecError

REPO = Path(__file__).resolve().parent.parent
SRM_NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "din": "DIN"}  # display names; others are shown as given
TEXT_PRESETS = ("compact-text", "smollm2-135m")  # what the demo grounds in item text when --llm-preset isn't known


def headline_policy() -> str:
    """The request policy of the headline (the grid's budgeted consistency policy), as the simulator names it."""
    from simulator import config

    return getattr(config, "HEADLINE_POLICY", "consistency-budget")


class PipelineError(LSC4RecError):
    """The run is refused before work is wasted: a stage's options, too little data, or a finished stage in OUT
    made with other settings or inputs (never reused silently)."""


# Options ------------------------------------------------------------------------------------------------------

def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options the demo and the pipeline share; the defaults are the demo's (measured) settings."""
    llm = parser.add_argument_group("cloud LLM")
    llm.add_argument("--llm-preset", default=None, metavar="NAME",
                     help="LLM preset to train: compact-text (item tokens grounded in the item text vectors; the "
                          "default), compact (item ids only; the default with --no-text), smollm2-135m (pretrained "
                          "blocks on grounded tokens), tiny (a smoke run)")
    llm.add_argument("--no-text", dest="text", action="store_false",
                     help="skip the item text embedding: the cloud learns item ids only (preset compact); faster, "
                          "and weaker on items with few interactions. Use it when the items have no titles (their "
                          "text is then only 'item <id>')")
    llm.add_argument("--encoder", default="smollm2-135m", metavar="NAME",
                     help="text encoder of the item vectors (`lsc4rec embed items --encoder`): smollm2-135m "
                          "(default), minilm (faster), folder:PATH")
    # Both sides train until their own validation stops improving (the presets' patience of 6 epochs); the caps
    # only bound the time. With a cap of 10 the LLM was cut off while still improving (best epoch 9 of 10,
    # validation NDCG@10 0.108; it peaks at epoch 12 with 0.116), which weakened the cloud side.
    llm.add_argument("--llm-epochs", type=int, default=30, metavar="N",
                     help="epoch cap of the cloud LLM; early stopping ends it first (about 20 epochs, under 2 min "
                          "on 2 quiet cores for ML-100K)")
    llm.add_argument("--llm-set", dest="llm_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override an LLM config value, as `lsc4rec train llm --set` (repeatable), "
                          "e.g. --llm-set model.hidden=32")
    llm.add_argument("--llm", default="", metavar="DIR",
                     help="use this trained LLM folder (`lsc4rec train llm` output) instead of training one")
    srm = parser.add_argument_group("device SRM")
    srm.add_argument("--srm-model", default="sasrec", metavar="NAME",
                     help="on-device architecture (`lsc4rec train srm --model`): sasrec (default), gru4rec, din")
    srm.add_argument("--srm-preset", default="", metavar="NAME",
                     help="SRM preset, a name in device/training/presets or a TOML file (`train srm --config`); "
                          "default: the architecture's own preset (e.g. sasrec)")
    srm.add_argument("--srm-epochs", type=int, default=20, metavar="N",
                     help="epoch cap of the independent SRM; early stopping may end it first (about 2.5 min for "
                          "SASRec on ML-100K)")
    srm.add_argument("--srm-set", dest="srm_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override an SRM config value (repeatable): model.* and train.* go to the independent "
                          "training, coop.* to the cooperative one, e.g. --srm-set coop.epochs=2")
    srm.add_argument("--no-coop", dest="coop", action="store_false",
                     help="skip cooperative training on the LLM's candidate lists (the device runs the "
                          "independent SRM)")
    srm.add_argument("--srm-indep", default="", metavar="DIR",
                     help="use this independent SRM folder (srm.pt) instead of training one")
    srm.add_argument("--srm-coop", default="", metavar="DIR",
                     help="use this cooperative SRM folder (srm.pt) instead of training one")
    sim = parser.add_argument_group("simulation")
    sim.add_argument("--sim-preset", default="demo", metavar="NAME",
                     help="simulation preset (simulator/presets/NAME.toml or a TOML file): demo (default: the "
                          "demo's grid of policies x fusions x budgets), quick (one seed, the 20%% budget)")
    sim.add_argument("--seeds", default="0,1,2", metavar="S,S,...",
                     help="comma-separated seeds of the grid (default 0,1,2)")
    sim.add_argument("--sim-set", dest="sim_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a simulation key, as `lsc4rec simulate --set` (repeatable), "
                          "e.g. --sim-set max_users=200")


def register(groups) -> None:
    """Add `lsc4rec pipeline`."""
    from shared.cli import add_json_flag, handler

    p = groups["_top"].add_parser(
        "pipeline", help="your own interaction file end to end: prepare, train, export, serve, replay, report",
        description="One command from an interaction file to the demo's report: read and check the data (exit 2 "
                    "and one line naming the file, line and field if it is bad, before anything is trained), "
                    "prepare it into OUT/data, embed the item texts, train the cloud LLM and the device SRM "
                    "(independent, then cooperative), export the SRM to ONNX, start `lsc4rec cloud serve` on "
                    "127.0.0.1, replay the users' streams in process and through gRPC device clients, and write "
                    "OUT/sim/report.md (the demo's report) and OUT/pipeline.json. Finished stages in OUT are "
                    "reused by a re-run. Progress goes to stderr; the headline table (or --json) to stdout.")
    p.add_argument("--data", type=Path, required=True, metavar="FILE",
                   help="interaction file or folder, in a format `lsc4rec data prepare` reads (see --format)")
    p.add_argument("--format", default="auto", metavar="NAME",
                   help="format of --data: auto (default: .csv/.tsv/.txt = csv, .inter = recbole, u.data = "
                        "movielens-100k-raw, ratings.dat = movielens-1m, or a folder holding one of them), csv "
                        "(header user, item, timestamp[, title]), recbole, movielens-100k-raw, movielens-1m, "
                        "amazon-2018, amazon-2023")
    p.add_argument("--k-core", type=int, default=0, metavar="K",
                   help="drop users and items with fewer than K interactions, repeatedly (default 0 = off)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder: data/, llm/, srm-indep/, srm-coop/, models/, sim/report.md, logs/ ... "
                        "(finished stages here are reused)")
    add_model_options(p)
    add_json_flag(p)
    p.set_defaults(func=handler("simulator.pipeline", "main"))


# The plan -----------------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What one run does: where the data comes from and goes, the options, and how it reports."""

    out: Path
    data: Path  # the prepared dataset folder
    prepare: Callable[[], object]  # writes `data`; raises an LSC4RecError naming file, line and field
    data_label: str  # the data stage's progress label
    data_settings: dict  # what the data stage was made from (checked on a re-run)
    opts: argparse.Namespace  # add_model_options' values
    source: str = ""  # the user's file, named in messages about the data ("" = a fetched dataset)
    tag: str = "pipeline"  # progress prefix
    summary_file: str = "pipeline.json"
    announce_data: bool = True  # print "<label> ..." before the data stage (off: bad data gives one line only)
    as_json: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @property
    def llm_preset(self) -> str:
        return self.opts.llm_preset or ("compact-text" if self.opts.text else "compact")

    @property
    def srm_name(self) -> str:
        return SRM_NAMES.get(self.opts.srm_model, self.opts.srm_model)

    def say(self, text: str) -> None:
        print(f"[{self.tag}] {text}", file=sys.stderr, flush=True)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise InvalidArgumentError("--seeds", text, "give comma-separated integers, e.g. 0,1,2")
    return seeds


class Stages:
    """Finished-stage bookkeeping. A stage is finished when its marker file exists; OUT/stages.json records the
    settings and the upstream stages each one was made from, so that a re-run with other settings refuses to reuse
    it (a folder finished before this record existed is reused as it is)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.path = plan.out / "stages.json"
        self.saved: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.current: dict = {}  # this run's stamp of every stage so far (None: finished before the record)
        self.timings: dict = {}

    def stamp(self, settings: dict, after: tuple[str, ...]) -> dict:
        return {"settings": settings, "after": {k: _digest(self.current.get(k)) for k in after}}

    def run(self, key: str, label: str, marker: Path, settings: dict, action: Callable[[], object],
            after: tuple[str, ...] = (), reused: bool = False, announce: bool = True) -> float:
        stamp = self.stamp(settings, after)
        began = time.perf_counter()
        if marker.exists():
            old = None if reused else self.saved.get(key)
            if old is not None and old != stamp:
                raise PipelineError(f"{marker.parent} holds a finished '{label}' made {_difference(old, stamp)}; "
                                    f"delete it to redo that stage, or choose another --out")
            self.current[key] = {"reused": str(marker)} if reused else old
            self.plan.say(f"{label}: cached ({marker})")
            self.timings[key] = 0.0
            return 0.0
        if announce:
            self.plan.say(f"{label} ...")
        action()
        self.current[key] = self.saved[key] = stamp
        self.save()
        took = time.perf_counter() - began
        self.plan.say(f"{label}: {took:.0f} s")
        self.timings[key] = took
        return took

    def fresh(self, key: str, stamp: dict) -> bool:
        """A finished simulation may be reused: no record of it, or the same one."""
        old = self.saved.get(key)
        return old is None or old == stamp

    def record(self, key: str, stamp: dict) -> None:
        self.current[key] = self.saved[key] = stamp
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.saved, indent=1, sort_keys=True))
        tmp.replace(self.path)


def _digest(stamp) -> str:
    return "" if stamp is None else hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _difference(old: dict, new: dict) -> str:
    if old.get("settings") != new.get("settings"):
        return f"with other settings (then: {_short(old.get('settings'))}; now: {_short(new.get('settings'))})"
    changed = sorted(k for k in set(old.get("after", {})) | set(new.get("after", {}))
                     if old.get("after", {}).get(k) != new.get("after", {}).get(k))
    return f"from other inputs (redone since: {', '.join(changed)})"


def _short(settings) -> str:
    command = isinstance(settings, dict) and "command" in settings
    text = " ".join(settings["command"]) if command else json.dumps(settings)
    return text if len(text) <= 300 else text[:300] + "..."


# Stages -------------------------------------------------------------------------------------------------------

def _cli(*args: str, log: Path) -> None:
    """Run one `lsc4rec` stage as its own process (progress bars to the terminal, a copy of stderr in a log)."""
    cmd = [sys.executable, "-m", "simulator.cli", *args]
    print(f"$ lsc4rec {' '.join(args)}", file=sys.stderr, flush=True)
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"stage failed ({proc.returncode}): lsc4rec {' '.join(args)}\n{tail}")


class Commands:
    """The `lsc4rec` command line of every training stage, built up front so that all are checked before any runs."""

    def __init__(self, plan: Plan):
        o, out = plan.opts, plan.out
        self.data, self.vectors = str(plan.data), out / "item-vectors.npz"
        self.llm = Path(o.llm) if o.llm else out / "llm"
        self.indep = Path(o.srm_indep) if o.srm_indep else out / "srm-indep"
        self.coop = (Path(o.srm_coop) if o.srm_coop else out / "srm-coop") if o.coop else self.indep
        self.models = out / "models"
        self.preset_grounded = _grounded(plan)  # the preset reads item text vectors
        self.grounded = o.text and self.preset_grounded  # ... and the embed stage runs
        self.embed = ["embed", "items", "--data", self.data, "--encoder", o.encoder, "--out", str(self.vectors)]
        vectors = ["--vectors", str(self.vectors)] if self.grounded else []
        self.train_llm = ["train", "llm", "--data", self.data, "--preset", plan.llm_preset, *vectors,
                          "--out", str(self.llm), "--set", f"train.epochs={o.llm_epochs}",
                          *_sets(o.llm_overrides)]
        config = ["--config", o.srm_preset] if o.srm_preset else []
        indep_sets = [s for s in o.srm_overrides if not s.startswith("coop.")]
        self.train_indep = ["train", "srm", "--data", self.data, "--model", o.srm_model, *config,
                            "--out", str(self.indep), "--set", f"train.epochs={o.srm_epochs}", *_sets(indep_sets)]
        self.train_coop = ["train", "srm", "--data", self.data, "--model", o.srm_model, "--coop", "--resume",
                           str(self.indep / "srm.pt"), "--generator", f"llm:{self.llm}", "--out", str(self.coop),
                           *_sets([s for s in o.srm_overrides if s.startswith("coop.")])]

    def export(self, folder: Path) -> list[str]:
        return ["export", "srm", "--ckpt", str(folder), "--format", "onnx", "--out", str(folder)]

    @property
    def all(self) -> list[list[str]]:
        return [self.embed, self.train_llm, self.train_indep, self.train_coop, self.export(self.indep)]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for value in overrides for arg in ("--set", value)]


def _grounded(plan: Plan) -> bool:
    """Whether the LLM preset grounds its item tokens in text vectors (then the embed stage runs before it)."""
    try:
        from cloud.llm.train import load_llm_config
    except ModuleNotFoundError:  # no cloud extra here: the presets the demo grounds
        return plan.llm_preset in TEXT_PRESETS
    return load_llm_config(plan.llm_preset, None, plan.opts.llm_overrides).model.grounding == "text"


def _settings(plan: Plan, args: list[str]) -> dict:
    """A stage's record: its command line with OUT spelled as OUT (a moved OUT stays reusable)."""
    out = str(plan.out)
    return {"command": ["OUT" + a[len(out):] if a == out or a.startswith(out + "/") else a for a in args]}


def check_commands(commands: list[list[str]]) -> None:
    """Parse every stage's command line with `lsc4rec`'s own parser: a bad choice (say --srm-model) ends the run
    here, with the parser's one-line reason, instead of after the stages before it."""
    from simulator.cli import build_parser

    parser = build_parser()
    for args in commands:
        caught = io.StringIO()
        try:
            with redirect_stderr(caught):
                parser.parse_args(args)
        except SystemExit as exc:
            if exc.code:
                lines = [line for line in caught.getvalue().splitlines() if line.strip()]
                reason = lines[-1].split("error: ", 1)[-1] if lines else "invalid"
                raise PipelineError(f"the stage `lsc4rec {' '.join(args[:2])}` refuses its options: "
                                    f"{reason}") from None


def check_options(plan: Plan, commands: Commands) -> None:
    """Everything that can be checked without data: the stages' command lines and the simulation config."""
    o = plan.opts
    if not o.text and not o.llm and commands.preset_grounded:
        raise InvalidArgumentError("--llm-preset", plan.llm_preset, "grounds item tokens in text vectors, which "
                                                                    "--no-text skips (use compact)")
    if o.llm_epochs < 1 or o.srm_epochs < 1:
        bad = ("--llm-epochs", o.llm_epochs) if o.llm_epochs < 1 else ("--srm-epochs", o.srm_epochs)
        raise InvalidArgumentError(*bad, "must be at least 1")
    check_commands(commands.all)
    if o.srm_preset:
        from device.training import PRESETS
        from shared.config import resolve_preset

        resolve_preset(PRESETS, o.srm_preset, "--srm-preset")
    sim_config(plan, [])


def sim_config(plan: Plan, extra: list[str], srm: Path | str = ""):
    """The simulation config of one replay: the preset, the run's data and models, the user's --sim-set, then
    `extra` (what that replay fixes)."""
    from simulator.config import load_sim_config

    llm = Path(plan.opts.llm) if plan.opts.llm else plan.out / "llm"
    common = [f'data="{plan.data}"', f'llm="{llm}"', f"seeds={plan.seeds}", *plan.opts.sim_overrides]
    return load_sim_config(plan.opts.sim_preset, common + ([f'srm="{srm}"'] if srm else []) + extra)


def check_data(plan: Plan) -> None:
    """After the data stage, before any training: enough history for the replay."""
    from shared.data.dataset import load_dataset
    from shared.errors import ConfigError
    from simulator.config import check_against_data

    dataset = load_dataset(plan.data)
    config = sim_config(plan, [])
    where = plan.source or str(plan.data)
    try:
        check_against_data(config, dataset.sequences(), dataset.num_items)
    except ConfigError as exc:
        raise PipelineError(f"{where}: too little data for the replay (after preparation: {dataset.num_users} "
                            f"user(s), {dataset.num_items} item(s)): {exc}; give more data, or change the "
                            f"replay with --sim-set (stream_length, num_candidates)") from None


def build_artifacts(plan: Plan, stages: Stages, cmd: Commands) -> dict:
    """Data, LLM, SRMs and their ONNX exports, published into the models folder the server serves."""
    out, o = plan.out, plan.opts
    stages.run("data", plan.data_label, plan.data / "meta.json", plan.data_settings, plan.prepare,
               announce=plan.announce_data)
    check_data(plan)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if cmd.grounded:
        stages.run("embed", f"item vectors from their text ({o.encoder})", cmd.vectors, _settings(plan, cmd.embed),
                   lambda: _cli(*cmd.embed, log=logs / "embed-items.log"), after=("data",))
    stages.run("llm", f"train the {plan.llm_preset} LLM", cmd.llm / "config.json", _settings(plan, cmd.train_llm),
               lambda: _cli(*cmd.train_llm, log=logs / "train-llm.log"),
               after=("data", "embed") if cmd.grounded else ("data",), reused=bool(o.llm))
    stages.run("srm_indep", f"train {plan.srm_name} (independent)", cmd.indep / "srm.pt",
               _settings(plan, cmd.train_indep), lambda: _cli(*cmd.train_indep, log=logs / "train-srm-indep.log"),
               after=("data",), reused=bool(o.srm_indep))
    coop, made_by = cmd.coop, {cmd.indep: "srm_indep"}
    if o.coop:
        try:
            stages.run("srm_coop", f"train {plan.srm_name} (cooperative, on the LLM's lists)", coop / "srm.pt",
                       _settings(plan, cmd.train_coop), lambda: _cli(*cmd.train_coop, log=logs / "train-srm-coop.log"),
                       after=("llm", "srm_indep"), reused=bool(o.srm_coop))
            made_by[coop] = "srm_coop"
        except SystemExit as exc:  # say so plainly and go on with the independent model
            plan.say(f"cooperative training FAILED; the replay uses the independent {plan.srm_name} instead.\n{exc}")
            stages.timings["srm_coop_failed"] = str(exc).splitlines()[0]
            coop = cmd.indep
    for name, folder in (("independent", cmd.indep), ("cooperative", coop)):
        if name == "cooperative" and not o.coop:
            continue
        stages.run(f"export_{name}", f"export {name} {plan.srm_name} to ONNX", folder / "onnx" / "manifest.json",
                   _settings(plan, cmd.export(folder)),
                   lambda f=folder: _cli(*cmd.export(f), log=logs / f"export-{f.name}.log"),
                   after=(made_by[folder],))
    served = "export_cooperative" if o.coop else "export_independent"
    stages.run("publish", f"publish the {'cooperative' if o.coop else 'independent'} {plan.srm_name}",
               cmd.models / ".published", {"artifact": _settings(plan, [str(coop / "onnx")])["command"][0]},
               lambda: _publish(coop / "onnx", cmd.models), after=(served,))
    return {"llm": cmd.llm, "indep": cmd.indep, "coop": coop, "models": cmd.models, "vectors": cmd.vectors,
            "timings": stages.timings, "served": served}


def _publish(artifact: Path, models: Path) -> None:
    from cloud.registry import publish

    publish(artifact, models)
    (models / ".published").write_text(str(artifact))


def _cached(plan: Plan, stages: Stages, key: str, folder: Path, config, stamp: dict) -> dict | None:
    """A finished simulation of exactly this config and these models, if one is there."""
    from simulator.experiments import config_record

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
    from simulator.experiments import config_record
    from simulator.run import simulate

    folder = plan.out / key
    stamp = stages.stamp({"config": config_record(config)}, after)
    metrics = _cached(plan, stages, key, folder, config, stamp)
    if metrics is None:
        metrics = simulate(config, folder, **kw)
        stages.record(key, stamp)
    return metrics


def simulate_all(plan: Plan, stages: Stages, arts: dict) -> dict:
    """The in-process grid (the report), the independent SRM beside it, then all users over gRPC."""
    from simulator.experiments import load_world
    from simulator.run import simulate
    from simulator.server_proc import ServerProcess

    after, policy = ("data", "llm", arts["served"]), headline_policy()
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
    from simulator.report import _headline

    out, grid, remote = plan.out, results["grid"], results["grpc"]
    policy = headline_policy()
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


# The user's file ----------------------------------------------------------------------------------------------

def _formats() -> list[str]:
    from shared.data.readers import READERS

    return list(READERS.names())


def detect_format(path: Path) -> str:
    """The reader of `path` from its name (see --format auto); refuses what the name does not tell."""
    from shared.errors import DataFormatError

    if not path.exists():
        raise DataFormatError(path, 0, "-", "no such file or folder")
    if path.is_dir():
        for name, fmt in (("u.data", "movielens-100k-raw"), ("ratings.dat", "movielens-1m")):
            if (path / name).is_file():
                return fmt
        if any(path.glob("*.inter")):
            return "recbole"
        raise InvalidArgumentError("--format", "auto", f"{path} holds no u.data, ratings.dat or *.inter; give "
                                                       f"--format (known: {', '.join(_formats())})")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if name == "u.data":
        return "movielens-100k-raw"
    if name == "ratings.dat":
        return "movielens-1m"
    if suffix == ".inter":
        return "recbole"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise InvalidArgumentError("--format", "auto", f"cannot tell the format of {path.name} from its name; give "
                                                   f"--format (known: {', '.join(_formats())})")


def _fingerprint(path: Path) -> dict:
    """What identifies the user's data for the data stage's record: its name and size (a moved file is reused)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"name": path.name, "bytes": sum(p.stat().st_size for p in files)}


def main(args: argparse.Namespace) -> int:
    """`lsc4rec pipeline`."""
    source = Path(args.data).resolve()
    fmt = detect_format(source) if args.format == "auto" else args.format
    if fmt not in _formats():
        raise InvalidArgumentError("--format", fmt, f"not a known format (known: auto, {', '.join(_formats())})")
    if args.k_core < 0:
        raise InvalidArgumentError("--k-core", args.k_core, "must be >= 0 (0 = no filtering)")
    out = Path(args.out).resolve()
    data = out / "data"
    # The stages run from the repository root: a folder or file the user names is made absolute first.
    for key in ("llm", "srm_indep", "srm_coop"):
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    if args.srm_preset and (args.srm_preset.endswith(".toml") or Path(args.srm_preset).exists()):
        args.srm_preset = str(Path(args.srm_preset).resolve())

    def prepare():
        from shared.data.prepare import prepare as write

        return write(fmt, data, source, args.k_core)

    plan = Plan(out=out, data=data, prepare=prepare, data_label=f"read and prepare {source.name} ({fmt})",
                data_settings={"format": fmt, "k_core": args.k_core, **_fingerprint(source)}, opts=args,
                source=str(source), tag="pipeline", summary_file="pipeline.json", announce_data=False,
                as_json=args.json, seeds=parse_seeds(args.seeds))
    run(plan)
    return 0
