"""The `lsc4rec` command: one parser, each package registering its subcommands (imports stay lazy)."""
from __future__ import annotations

import argparse
import importlib
import sys

from shared.errors import LSC4RecError

GROUPS = {
    "data": "prepare and inspect datasets",
    "train": "train models (llm: cloud generator; srm: on-device small model; ground: SRM rows from item text)",
    "embed": "item knowledge: one vector per item from its text, with a language model",
    "eval": "evaluate models on a protocol",
    "export": "export models for devices",
    "cloud": "run the cloud gRPC server",
    "device": "run or benchmark the device client",
}
# Modules that add subcommands; each has register(groups). Missing ones (partial installs) are skipped.
REGISTRARS = ("shared.cli", "cloud.llm_cli", "cloud.text.cli", "cloud.cli", "device.training.cli", "device.runtime.cli",
              "simulator.commands", "simulator.pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsc4rec",
        description="Device-cloud collaborative recommender: a cloud LLM generates candidates, an on-device "
                    "small model re-ranks them, and the device decides when to ask for fresh ones.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {}
    for name, text in GROUPS.items():
        group = top.add_parser(name, help=text, description=text)
        groups[name] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    groups["_top"] = top
    for module in REGISTRARS:
        importlib.import_module(module).register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LSC4RecError as exc:
        print(f"lsc4rec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lsc4rec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
