"""`make demo`: the whole story on ML-100K — data, LLM, SASRec (independent + cooperative), export, a real
cloud server, all 943 users replayed through gRPC device clients, the report and the headline table.

It is `lsc4rec pipeline` (simulator/pipeline.py and its pipeline_* modules) applied to MovieLens-100K, fetched
first into data/ml-100k, with the pipeline's defaults (the demo's measured settings). Every stage leaves a finished
marker; a re-run skips finished stages (delete a folder to redo it).
Usage: python -m simulator.demo --out runs/demo [--llm DIR] [--srm-indep DIR] [--srm-coop DIR] [pipeline options]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.data.prepare import prepare
from shared.errors import LSC4RecError
from simulator.pipeline_options import add_model_options, parse_seeds
from simulator.pipeline_plan import REPO, Plan
from simulator.pipeline_run import run

DATA = REPO / "data" / "ml-100k"


def _prepare() -> None:
    prepare("ml-100k", DATA)


def plan(args: argparse.Namespace) -> Plan:
    """The pipeline's plan for ML-100K: the shared data/ml-100k folder, `[demo]` progress, OUT/demo.json."""
    return Plan(out=args.out, data=DATA, prepare=_prepare, data_label="prepare ML-100K",
                data_settings={"dataset": "ml-100k"}, opts=args, tag="demo", summary_file="demo.json",
                seeds=parse_seeds(args.seeds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="output folder (stages cached here)")
    add_model_options(parser)
    args = parser.parse_args(argv)
    try:
        run(plan(args))
    except LSC4RecError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
