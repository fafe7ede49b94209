"""`lsc4rec pipeline`: a user's own interaction file to the demo's report in one command.

The stages are the demo's (`make demo` is this pipeline applied to MovieLens-100K): read and prepare the data,
item text vectors, the cloud LLM, the device SRM (independent, then cooperative training on the LLM's lists),
ONNX export, publishing, a grid of in-process simulations, and a replay of every user through gRPC device
clients against a real `lsc4rec cloud serve` process. Every stage leaves a marker in OUT; a re-run skips what
is finished, and refuses a finished stage made with other settings (OUT/stages.json records them). The data is
read and checked before anything is trained: bad input ends with exit code 2 and one line naming the file,
line and field.

This module only registers the subcommand (every `lsc4rec` command imports it, so it stays light); the rest, in
the order a run goes through it:

    pipeline_options   the options the pipeline and the demo share (LLM, SRM, simulation)
    pipeline_input     the handler: the user's file (its format, its fingerprint) made into a plan, then run
    pipeline_plan      the plan, the stages' command lines, the checks before training
    pipeline_stages    running a stage, and OUT/stages.json (what each finished stage was made from)
    pipeline_run       the stages in order, the simulations, the headline table
"""
from __future__ import annotations

from pathlib import Path

from shared.cli import add_json_flag, handler
from simulator.pipeline_options import add_model_options


def register(groups) -> None:
    """Add `lsc4rec pipeline`."""
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
    p.set_defaults(func=handler("simulator.pipeline_input", "main"))
