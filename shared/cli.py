"""CLI helpers shared by every subcommand, and the `data` subcommands (prepare, stats)."""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any, Callable

from shared.data.readers import READERS


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the figures on stdout (progress goes to stderr)")


def emit(figures: dict[str, Any], as_json: bool, title: str = "") -> None:
    """Print figures as one JSON object (machine-readable) or as aligned `key: value` lines."""
    if as_json:
        print(json.dumps(figures, sort_keys=True, default=str))
        return
    if title:
        print(title)
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"  {key:<{width}}  {shown}")


def handler(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler that imports its module only when run (keeps `--help` and device installs light)."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)
    return run


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add `data prepare` and `data stats`."""
    prepare = groups["data"].add_parser(
        "prepare", help="fetch or read a dataset and write the project's format",
        description="Write a dataset folder (interactions.tsv, items.tsv, users.tsv, meta.json). "
                    "ml-100k is fetched from the recbole==1.2.1 wheel on PyPI and checked by sha256; "
                    "other formats are read from --input.")
    formats = READERS.items()
    prepare.add_argument("--dataset", required=True,
                         help="ml-100k (fetched), or a format to read from --input: "
                              f"{', '.join(name for name, _ in formats)}")
    prepare.add_argument("--input", type=Path, default=None,
                         help="source file or folder (gzip is detected and streamed): "
                              + "; ".join(f"{name} = {_summary(reader)}" for name, reader in formats)
                              + "; for ml-100k, a folder that already holds ml-100k.{inter,item,user} (skips the download)")
    prepare.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    prepare.add_argument("--k-core", type=int, default=0,
                         help="drop users and items with fewer than K interactions, repeatedly (0 = off)")
    add_json_flag(prepare)
    prepare.set_defaults(func=handler("shared.data.prepare", "main"))

    holdout = groups["data"].add_parser(
        "holdout", help="the validation world: a prepared dataset without each user's last S interactions",
        description="Write a copy of a prepared dataset without each user's last --drop-last interactions (same "
                    "users, items and vocabulary hash). Models trained on it and replayed on its streams (the "
                    "original's events [-2S, -S) for S = the stream length) choose settings such as the fusion "
                    "alpha without looking at the test streams.")
    holdout.add_argument("--data", type=Path, required=True, help="dataset folder written by `data prepare`")
    holdout.add_argument("--drop-last", type=int, default=10,
                         help="interactions dropped from the end of each user's sequence (default 10, protocol B's "
                              "stream length)")
    holdout.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically; not --data)")
    add_json_flag(holdout)
    holdout.set_defaults(func=handler("shared.data.prepare", "holdout_main"))

    stats = groups["data"].add_parser("stats", help="print the counts of a prepared dataset folder")
    stats.add_argument("--data", type=Path, required=True, help="dataset folder written by `data prepare`")
    add_json_flag(stats)
    stats.set_defaults(func=handler("shared.data.prepare", "stats_main"))
    _register_baseline(groups["eval"])


def add_cold_flags(parser: argparse.ArgumentParser, seed_flag: str, seed_default: int | None,
                   fraction_default: float | None) -> None:
    """Protocol C's cold draw: its seed (`seed_flag`: --seed or --cold-seed) and --cold-fraction.

    A None default means "the checkpoint's recorded value" (eval srm)."""
    recorded = "the checkpoint's recorded value"
    parser.add_argument(seed_flag, type=int, default=seed_default, metavar="S",
                        help="seed of protocol C's cold-item draw (default "
                             f"{recorded if seed_default is None else seed_default})")
    parser.add_argument("--cold-fraction", type=float, default=fraction_default, metavar="F",
                        help="share of the catalogue drawn cold, in [0, 1) (default "
                             f"{recorded if fraction_default is None else fraction_default})")


def _register_baseline(sub) -> None:
    p = sub.add_parser(
        "baseline", help="evaluate a non-learned baseline (popularity, text nearest neighbour); numpy only",
        description="Full-catalogue ranking with seen items removed, figures sliced by the target item: cold "
                    "(protocol C's drawn items), tail (1-10 training interactions), warm (more). Protocols: loo = A "
                    "(test targets, nothing cold); cold = C on the LOO test targets; cold-stream = C on every "
                    "protocol B stream event.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by `lsc4rec data prepare`")
    p.add_argument("--kind", choices=("popularity", "text-knn"), required=True,
                   help="popularity = training counts; text-knn = cosine similarity of item vectors to the mean of "
                        "the user's last --recent items' vectors")
    p.add_argument("--vectors", type=Path, default=None,
                   help="item vectors .npz written by `lsc4rec embed items` (needed by text-knn; its vocab_hash "
                        "must be the dataset's)")
    p.add_argument("--protocol", choices=("loo", "cold", "cold-stream"), default="cold",
                   help="loo = protocol A; cold = protocol C on LOO test targets (default); cold-stream = protocol "
                        "C on every stream event (stream length 10)")
    add_cold_flags(p, "--seed", 0, 0.1)
    p.add_argument("--recent", type=int, default=5, help="text-knn: history items averaged (default 5)")
    p.add_argument("--decay", type=float, default=1.0,
                   help="text-knn: weight decay**a for the item a steps before the most recent (default 1.0 = mean)")
    p.add_argument("--per-example", type=Path, default=None, metavar="FILE",
                   help="also write per-example users, targets, slice, rank and NDCG@10 to FILE (.npz), for "
                        "paired bootstrap comparisons")
    add_json_flag(p)
    p.set_defaults(func=handler("shared.baselines", "eval_main"))


def _summary(reader: Callable) -> str:
    """A reader's docstring up to its first blank line, on one line (the `--input` help of its format)."""
    return " ".join((reader.__doc__ or "").split("\n\n")[0].split()).rstrip(".")
