"""Grounded against neutral untrained items in protocol C replays (`lsc4rec train ground`; docs/results.md).

Each pair is two `lsc4rec simulate --preset new-items` folders of one cold draw and one SRM training seed: the SRM
as trained (its untrained items get a neutral score) and its grounded copy. For each run of the grid (e.g.
budget-fusion-b20) it prints NDCG@10 on the new items' events and on all events, both sides, and grounded − neutral
averaged over the pairs per user, with a 95% bootstrap interval over users (users with no new-item event are left
out of that column).

    python -m benchmarks.grounding NEUTRAL_DIR:GROUNDED_DIR [...] [--runs budget-fusion-b20 ...]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from shared.data.cold import draw_cold_items
from shared.data.dataset import load_dataset
from shared.metrics import ndcg_gains
from simulator.figures import paired_difference

RUNS = ("budget-fusion-b20", "budget-srm-b20", "always-fusion", "never-fusion")


def per_user(folder: Path, run: str) -> tuple[dict[int, float], dict[int, float]]:
    """({user: mean NDCG@10 over all events}, {user: mean over new-item events}) of one run (seed 0 rows)."""
    config = json.loads((folder / "config.json").read_text())
    dataset = load_dataset(config["data"])
    cold = set(draw_cold_items(dataset.num_items, config["cold_fraction"], config["cold_seed"]).tolist())
    every: dict[int, list] = {}
    new: dict[int, list] = {}
    with open(folder / "rows" / f"{run}-s0.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            gain = float(ndcg_gains(np.array([int(row["rank"])]), 10)[0])
            user = int(row["user"])
            every.setdefault(user, []).append(gain)
            if int(row["target"]) in cold:
                new.setdefault(user, []).append(gain)
    return ({u: float(np.mean(g)) for u, g in every.items()}, {u: float(np.mean(g)) for u, g in new.items()})


def compare(pairs: list[tuple[Path, Path]], run: str) -> dict:
    sides = [[per_user(folder, run) for folder in pair] for pair in pairs]
    figures = {}
    for column, index in (("new items", 1), ("all events", 0)):
        users = sorted(set.intersection(*(set(s[0][index]) for s in sides)))
        neutral = np.mean([[s[0][index][u] for u in users] for s in sides], axis=0)
        grounded = np.mean([[s[1][index][u] for u in users] for s in sides], axis=0)
        figures[column] = {"users": len(users), "neutral": float(neutral.mean()), "grounded": float(grounded.mean()),
                           **paired_difference(grounded, neutral)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", metavar="NEUTRAL:GROUNDED", help="two simulate output folders")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help=f"grid runs to compare (default {' '.join(RUNS)})")
    args = parser.parse_args(argv)
    pairs = [tuple(Path(p) for p in spec.split(":", 1)) for spec in args.pairs]
    print("| run | new items: neutral | grounded | grounded − neutral [95%] | all events: neutral | grounded "
          "| grounded − neutral [95%] |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        f = compare(pairs, run)
        cells = []
        for column in ("new items", "all events"):
            c = f[column]
            cells += [f"{c['neutral']:.4f}", f"{c['grounded']:.4f}",
                      f"{c['diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"]
        print(f"| {run} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
