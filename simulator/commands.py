"""Registers `lsc4rec simulate` (handlers import lazily: --help stays light)."""
from __future__ import annotations

from pathlib import Path

from shared.cli import add_json_flag, handler


def register(groups) -> None:
    sim = groups["_top"].add_parser(
        "simulate", help="replay user streams through device sessions and the cloud (protocol B), write a report",
        description="Run a simulation preset: policies x fusion x request budgets x seeds on protocol B, "
                    "plus the no-cloud baseline; writes config.json, metrics.json, rows/*.csv, report.md and PNG plots.")
    sim.add_argument("--preset", required=True,
                     help="preset name (simulator/presets/NAME.toml, e.g. ml100k, quick) or a path to a TOML file")
    sim.add_argument("--out", type=Path, required=True, help="output folder (created; files are replaced)")
    sim.add_argument("--backend", choices=("local", "ray"), default=None,
                     help="local (default) or ray: shard users across Ray workers (needs the [ray] extra)")
    sim.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start one node)")
    sim.add_argument("--mode", choices=("inprocess", "grpc"), default=None,
                     help="inprocess: call the generator directly; grpc: devices call `lsc4rec cloud serve`")
    sim.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a preset key, e.g. --set budgets=[0.2] --set network.loss=0.1 (repeatable)")
    sim.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                     help="run the preset once per value (per combination, if repeated) of a fusion or request "
                          "setting (alpha, srm_norm, llm_norm, measure, threshold), sharing one world and its cloud "
                          "lists; writes OUT/KEY=V/ per setting and OUT/sweep.json, and prints each setting's mean "
                          "fusion NDCG@10 over the budgets of the budget policy, best first (e.g. --sweep alpha=0.2,0.35)")
    sim.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_flag(sim)
    sim.set_defaults(func=handler("simulator.run", "main"))
