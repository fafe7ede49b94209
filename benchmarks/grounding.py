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
from functools import lru_cache
from pathlib import Path

import numpy as np

from shared.data.cold import draw_cold_items
from shared.data.dataset import load_dataset
from shared.metrics import ndcg_gains
from simulator.figures import paired_difference

RUNS = ("budget-fusion-b20", "budget-srm-b20", "always-fusion", "never-fusion")


@lru_cache(maxsize=None)
def cold_items(data: str, fraction: float, seed: int) -> np.ndarray:
    """The replay's new items (protocol C's cold draw), drawn once per dataset and draw."""
    return draw_cold_items(load_dataset(data).num_items, fraction, seed)


def _means(users: np.ndarray, gains: np.ndarray) -> dict[int, float]:
    ids, index = np.unique(users, return_inverse=True)
    return dict(zip(ids.tolist(), (np.bincount(index, weights=gains) / np.bincount(index)).tolist()))


def per_user(folder: Path, run: str) -> tuple[dict[int, float], dict[int, float]]:
    """({user: mean NDCG@10 over all events}, {user: mean over new-item events}) of one run (seed 0 rows)."""
    config = json.loads((folder / "config.json").read_text())
    cold = cold_items(config["data"], config["cold_fraction"], config["cold_seed"])
    with open(folder / "rows" / f"{run}-s0.csv", newline="") as handle:
        rows = [(int(r["user"]), int(r["rank"]), int(r["target"])) for r in csv.DictReader(handle)]
    users, ranks, targets = (np.array(column, dtype=np.int64) for column in zip(*rows))
    gains, new = ndcg_gains(ranks, 10), np.isin(targets, cold)
    return _means(users, gains), _means(users[new], gains[new])


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
