"""The plan of one pipeline run (`lsc4rec pipeline`, `make demo`): where the data comes from and goes, the
`lsc4rec` command line of every training stage, and the checks made before anything is trained (the options and
stage command lines before any stage; the prepared data right after the data stage)."""
from __future__ import annotations

import argparse
import io
import sys
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from device.training import PRESETS
from shared.config import resolve_preset
from shared.data.dataset import load_dataset
from shared.errors import ConfigError, InvalidArgumentError, LSC4RecError
from simulator.cli import build_parser
from simulator.config import check_against_data, load_sim_config

REPO = Path(__file__).resolve().parent.parent
SRM_NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "din": "DIN"}  # display names; others are shown as given
TEXT_PRESETS = ("compact-text", "smollm2-135m")  # what the demo grounds in item text when --llm-preset isn't known


class PipelineError(LSC4RecError):
    """The run is refused before work is wasted: a stage's options, too little data, or a finished stage in OUT
    made with other settings or inputs (never reused silently)."""


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
    def llm_dir(self) -> Path:
        """The cloud LLM's folder: the one given with --llm, or OUT/llm."""
        return Path(self.opts.llm) if self.opts.llm else self.out / "llm"

    @property
    def srm_name(self) -> str:
        return SRM_NAMES.get(self.opts.srm_model, self.opts.srm_model)

    def say(self, text: str) -> None:
        print(f"[{self.tag}] {text}", file=sys.stderr, flush=True)


class Commands:
    """The `lsc4rec` command line of every training stage, built up front so that all are checked before any runs."""

    def __init__(self, plan: Plan):
        o, out = plan.opts, plan.out
        self.data, self.vectors = str(plan.data), out / "item-vectors.npz"
        self.llm = plan.llm_dir
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
        """ONNX (the full-catalogue reference) and the catalogue-free device (user encoder + partition head)."""
        return ["export", "srm", "--ckpt", str(folder), "--format", "onnx,user-encoder", "--data", self.data,
                "--out", str(folder)]

    @property
    def all(self) -> list[list[str]]:
        return [self.embed, self.train_llm, self.train_indep, self.train_coop, self.export(self.indep)]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for value in overrides for arg in ("--set", value)]


def _grounded(plan: Plan) -> bool:
    """Whether the LLM preset grounds its item tokens in text vectors (then the embed stage runs before it)."""
    try:  # a cloud module (torch): imported only here, and absent without the cloud extra
        from cloud.llm.train import load_llm_config
    except ModuleNotFoundError:  # no cloud extra here: the presets the demo grounds
        return plan.llm_preset in TEXT_PRESETS
    return load_llm_config(plan.llm_preset, None, plan.opts.llm_overrides).model.grounding == "text"


def stage_settings(plan: Plan, args: list[str]) -> dict:
    """A stage's record: its command line with OUT spelled as OUT (a moved OUT stays reusable)."""
    out = str(plan.out)
    return {"command": ["OUT" + a[len(out):] if a == out or a.startswith(out + "/") else a for a in args]}


def sim_config(plan: Plan, extra: list[str], srm: Path | str = ""):
    """The simulation config of one replay: the preset, the run's data and models, the user's --sim-set, then
    `extra` (what that replay fixes)."""
    common = [f'data="{plan.data}"', f'llm="{plan.llm_dir}"', f"seeds={plan.seeds}", *plan.opts.sim_overrides]
    return load_sim_config(plan.opts.sim_preset, common + ([f'srm="{srm}"'] if srm else []) + extra)


# The checks ---------------------------------------------------------------------------------------------------

def check_commands(commands: list[list[str]]) -> None:
    """Parse every stage's command line with `lsc4rec`'s own parser: a bad choice (say --srm-model) ends the run
    here, with the parser's one-line reason, instead of after the stages before it."""
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
        resolve_preset(PRESETS, o.srm_preset, "--srm-preset")
    sim_config(plan, [])


def check_data(plan: Plan) -> None:
    """After the data stage, before any training: enough history for the replay."""
    dataset = load_dataset(plan.data)
    config = sim_config(plan, [])
    where = plan.source or str(plan.data)
    try:
        check_against_data(config, dataset.sequences(), dataset.num_items)
    except ConfigError as exc:
        raise PipelineError(f"{where}: too little data for the replay (after preparation: {dataset.num_users} "
                            f"user(s), {dataset.num_items} item(s)): {exc}; give more data, or change the "
                            f"replay with --sim-set (stream_length, num_candidates)") from None
