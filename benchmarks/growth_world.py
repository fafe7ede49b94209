"""The catalogue-growth run of docs/results.md: `--write` makes runs/growth/base (ML-100K cut to its first 1,600
items and their interactions); `--evaluate` asks the newest (largest) version in runs/growth/gen for each user's
list before their first event on a new item and prints how often that item is in the top 10 / 50."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.data.dataset import RawItem, build_dataset, load_dataset, write_dataset

KEEP = 1600
FULL = Path("data/ml-100k")
ROOT = Path("runs/growth")


def write_base() -> None:
    full = load_dataset(FULL)
    raw = {i.raw_id: RawItem(i.raw_id, i.title, i.year, i.genres) for i in full.items[:KEEP]}
    events = [(full.users[u - 1], full.items[i - 1].raw_id, int(t)) for u, i, t in full.interactions if i <= KEEP]
    print(write_dataset(build_dataset(events, raw, meta=dict(full.meta)), ROOT / "base"))


def evaluate() -> None:
    from cloud.llm.store import load_generator

    full = load_dataset(FULL)
    folders = sorted(ROOT.glob("gen/llm-*"), key=lambda p: json.loads((p / "generator.json").read_text())["num_items"])
    generator = load_generator(folders[-1], full)
    histories, targets = [], []
    for seq in map(np.asarray, full.sequences()):
        new = np.flatnonzero(seq > KEEP)
        if new.size and new[0] >= 3:
            histories.append(seq[:new[0]].tolist())
            targets.append(int(seq[new[0]]))
    hit10 = hit50 = with_new = new_count = 0
    for start in range(0, len(histories), 64):
        for ranked, target in zip(generator.generate(histories[start:start + 64], 50), targets[start:start + 64]):
            items = [c.item for c in ranked]
            hit10, hit50 = hit10 + (target in items[:10]), hit50 + (target in items)
            count = sum(i > KEEP for i in items)
            with_new, new_count = with_new + (count > 0), new_count + count
    n = len(histories)
    print(json.dumps({"users": n, "hr@10": hit10 / n, "hr@50": hit50 / n, "lists_with_new": with_new / n,
                      "new_per_list": new_count / n, "version": generator.version}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write runs/growth/base")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the newest version in runs/growth/gen")
    args = parser.parse_args()
    if args.write:
        write_base()
    if args.evaluate:
        evaluate()
