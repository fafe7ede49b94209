"""The options `lsc4rec pipeline` and `make demo` (simulator/demo.py) share: the cloud LLM, the device SRM and the
simulation grid. The defaults are the demo's (measured) settings."""
from __future__ import annotations

import argparse

from shared.errors import InvalidArgumentError

# The two trained sides, the cloud LLM and the device SRM, each have an epoch cap (--SIDE-epochs) and config
# overrides (--SIDE-set): side -> (the cap, its help, --SIDE-set's help). Both sides train until their own validation
# stops improving (the presets' patience of 6 epochs); the caps only bound the time. With a cap of 10 the LLM was cut
# off while still improving (best epoch 9 of 10, validation NDCG@10 0.108; it peaks at epoch 12 with 0.116), which
# weakened the cloud side.
TRAINING = {
    "llm": (30, "epoch cap of the cloud LLM; early stopping ends it first (about 20 epochs, under 2 min on 2 quiet "
                "cores for ML-100K)",
            "override an LLM config value, as `lsc4rec train llm --set` (repeatable), e.g. --llm-set model.hidden=32"),
    "srm": (20, "epoch cap of the independent SRM; early stopping may end it first (about 2.5 min for SASRec on "
                "ML-100K)",
            "override an SRM config value (repeatable): model.* and train.* go to the independent training, coop.* "
            "to the cooperative one, e.g. --srm-set coop.epochs=2"),
}


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
    _add_training(llm, "llm")
    _add_trained(llm, "--llm", "trained LLM folder (`lsc4rec train llm` output)")
    srm = parser.add_argument_group("device SRM")
    srm.add_argument("--srm-model", default="sasrec", metavar="NAME",
                     help="on-device architecture (`lsc4rec train srm --model`): sasrec (default), gru4rec, din")
    srm.add_argument("--srm-preset", default="", metavar="NAME",
                     help="SRM preset, a name in device/training/presets or a TOML file (`train srm --config`); "
                          "default: the architecture's own preset (e.g. sasrec)")
    _add_training(srm, "srm")
    srm.add_argument("--no-coop", dest="coop", action="store_false",
                     help="skip cooperative training on the LLM's candidate lists (the device runs the "
                          "independent SRM)")
    _add_trained(srm, "--srm-indep", "independent SRM folder (srm.pt)")
    _add_trained(srm, "--srm-coop", "cooperative SRM folder (srm.pt)")
    sim = parser.add_argument_group("simulation")
    sim.add_argument("--sim-preset", default="demo", metavar="NAME",
                     help="simulation preset (simulator/presets/NAME.toml or a TOML file): demo (default: the "
                          "demo's grid of policies x fusions x budgets), quick (one seed, the 20%% budget)")
    sim.add_argument("--seeds", default="0,1,2", metavar="S,S,...",
                     help="comma-separated seeds of the grid (default 0,1,2)")
    _add_overrides(sim, "sim", "override a simulation key, as `lsc4rec simulate --set` (repeatable), "
                               "e.g. --sim-set max_users=200")


def _add_training(group, side: str) -> None:
    """--SIDE-epochs and --SIDE-set of a trained side (TRAINING)."""
    epochs, epochs_help, set_help = TRAINING[side]
    group.add_argument(f"--{side}-epochs", type=int, default=epochs, metavar="N", help=epochs_help)
    _add_overrides(group, side, set_help)


def _add_overrides(group, side: str, text: str) -> None:
    """--SIDE-set KEY=VALUE, repeatable, collected in SIDE_overrides."""
    group.add_argument(f"--{side}-set", dest=f"{side}_overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=text)


def _add_trained(group, flag: str, what: str) -> None:
    """A folder that replaces one training stage (the stage is then reused, never run)."""
    group.add_argument(flag, default="", metavar="DIR", help=f"use this {what} instead of training one")


def parse_seeds(text: str) -> list[int]:
    """--seeds: comma-separated integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise InvalidArgumentError("--seeds", text, "give comma-separated integers, e.g. 0,1,2")
    return seeds
