"""Request signals against chance: each calibrated run of one or more simulation folders against its random twin.

For every folder (a `lsc4rec simulate` output, or each setting of a `--sweep`) and every budget: fusion NDCG@10 of
the calibrated policy, the mean NDCG@10 of its random twins at the same realised rate (every seed), and their paired
difference over users with a 95% bootstrap interval (users resampled; the twin's per-user NDCG averaged over its
seeds first). With `--reference FOLDER` (e.g. full-catalogue regret), each gain is also given as a share of the
reference's gain at that budget. Prints a Markdown table and, with --json, one JSON object per row.

    python -m benchmarks.request_signals runs/x/measure=miss-belief runs/y --reference runs/x/measure=regret
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from simulator.figures import paired_difference

METRIC, PER_USER = "ndcg@10", "per_user_ndcg@10"


def gains(folder: Path, fusion: str = "fusion") -> dict[float, dict]:
    """budget -> {ndcg, random, rate, diff, ci95} of a simulation folder's calibrated runs."""
    runs = json.loads((folder / "metrics.json").read_text())["runs"]
    out = {}
    for run in runs:
        if run["fusion"] != fusion or run["policy"] == "random-matched" or run.get("budget") is None:
            continue
        twins = [r for r in runs if r["policy"] == "random-matched" and r["budget"] == run["budget"]
                 and r["fusion"] == fusion]
        if not twins:
            continue
        chance = np.mean([r[PER_USER] for r in twins], axis=0)
        paired = paired_difference(run[PER_USER], chance) or {"diff": float("nan"), "ci95": [float("nan")] * 2}
        out[run["budget"]] = {"ndcg": run[METRIC], "random": float(np.mean([r[METRIC] for r in twins])),
                              "rate": run["request_rate"], "random_seeds": len(twins), **paired}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="simulation output folders (each with metrics.json)")
    parser.add_argument("--reference", type=Path, help="a folder whose gain is 100%% (e.g. measure=regret)")
    parser.add_argument("--fusion", default="fusion", help="the grid's fusion to read (default fusion)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per row")
    args = parser.parse_args(argv)
    ref = gains(args.reference, args.fusion) if args.reference else {}
    rows = [(str(f), gains(f, args.fusion)) for f in ([args.reference] if args.reference else []) + args.folders]
    budgets = sorted({b for _, g in rows for b in g})
    print("| folder | " + " | ".join(f"{b:.0%}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name, found in rows:
        cells = []
        for b in budgets:
            g = found.get(b)
            if g is None:
                cells.append("-")
                continue
            share = f" {g['diff'] / ref[b]['diff']:.0%}" if b in ref and ref[b]["diff"] > 0 and name != str(
                args.reference) else ""
            cells.append(f"{g['ndcg']:.4f} vs {g['random']:.4f}: {g['diff']:+.4f} "
                         f"[{g['ci95'][0]:+.4f},{g['ci95'][1]:+.4f}]{share}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        for name, found in rows:
            for b, g in found.items():
                print(json.dumps({"folder": name, "budget": b, **g}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
