"""Protocol C study: every model on the cold, tail and warm targets of several cold draws, pooled, paired bootstrap.

    python -m benchmarks.study_cold --data data/ml-100k --vectors runs/vectors/smollm2.npz --out runs/study-cold

Per draw S (also the training seed): trains the id-only compact LLM, the text-grounded LLM and SASRec on the
split without the cold items (`--protocol cold|cold-stream --cold-seed S`), evaluates them and the popularity and
text nearest-neighbour baselines with per-example ranks, then pools the draws: HR@10, NDCG@10, recall@50 per
slice and model, and the text-grounded LLM minus each other model, paired over the same examples (95% bootstrap).
A finished training or evaluation is reused (delete its folder to redo it). JSON lines on stdout; OUT/table.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

MODELS = ("llm-text", "llm-id", "sasrec", "text-knn", "popularity")
SLICES = ("cold", "tail", "warm", "all")


def _lsc4rec(*args: str, log: Path) -> dict:
    """Run one `lsc4rec ... --json` step; its JSON line, or SystemExit with the log's tail."""
    with log.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "simulator.cli", *args, "--json"], stdout=subprocess.PIPE,
                              stderr=err, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): lsc4rec {' '.join(args)}\n{log.read_text()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_draw(args, seed: int, out: Path) -> None:
    """Train (unless done) and evaluate every model of one cold draw; per-example ranks in OUT/s{seed}/."""
    out.mkdir(parents=True, exist_ok=True)
    data, common = str(args.data), ["--protocol", args.protocol]
    trainers = {
        "llm-text": ["train", "llm", "--data", data, "--preset", args.text_preset, "--vectors", str(args.vectors),
                     "--seed", str(seed), "--cold-seed", str(seed), *args.text_set],
        "llm-id": ["train", "llm", "--data", data, "--preset", "compact", "--seed", str(seed), "--cold-seed", str(seed)],
        "sasrec": ["train", "srm", "--data", data, "--model", "sasrec", "--seed", str(seed), "--cold-seed", str(seed)],
    }
    for name in args.models:
        ranks = out / f"{name}.npz"
        if ranks.is_file():
            continue
        print(f"[study] draw {seed}: {name}", file=sys.stderr, flush=True)
        folder = out / name
        if name in trainers and not (folder / ("srm.pt" if name == "sasrec" else "config.json")).is_file():
            _lsc4rec(*trainers[name], *common, "--out", str(folder), log=out / f"{name}.train.log")
        if name.startswith("llm-"):
            step = ["eval", "llm", "--model", str(folder), "--threads", "2"]
        elif name == "sasrec":
            step = ["eval", "srm", "--ckpt", str(folder)]
        else:
            step = ["eval", "baseline", "--kind", name, "--seed", str(seed)] + (
                ["--vectors", str(args.vectors)] if name == "text-knn" else [])
        figures = _lsc4rec(*step, "--data", data, *common, "--per-example", str(ranks), log=out / f"{name}.eval.log")
        (out / f"{name}.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def pooled(args, seeds: list[int]) -> tuple[dict, list[dict]]:
    """Figures per (model, slice) over the draws' examples together, and paired differences against llm-text."""
    from shared.metrics import hit_rate, ndcg

    from simulator.figures import paired_difference

    loaded = {m: [np.load(args.out / f"s{s}" / f"{m}.npz") for s in seeds] for m in args.models}
    slices = np.concatenate([d["slice"] for d in loaded[args.models[0]]])
    masks = {name: slices == name if name != "all" else np.ones(len(slices), dtype=bool) for name in SLICES}
    table, pairs = {}, []
    for model, parts in loaded.items():
        ranks = np.concatenate([d["ranks"] for d in parts])
        for name, keep in masks.items():
            table[(model, name)] = {"hr@10": hit_rate(ranks[keep], 10), "ndcg@10": ndcg(ranks[keep], 10),
                                    "recall@50": hit_rate(ranks[keep], 50), "examples": int(keep.sum())}
    base = "llm-text" if "llm-text" in loaded else args.models[0]
    for other in (m for m in args.models if m != base):
        for name, keep in masks.items():
            for metric, k in (("hr@10", 10), ("ndcg@10", 10)):
                gain = {m: np.concatenate([_per_example(d["ranks"], metric, k) for d in loaded[m]])[keep]
                        for m in (base, other)}
                pairs.append({"slice": name, "metric": metric, "a": base, "b": other,
                              **(paired_difference(gain[base], gain[other]) or {})})
    return table, pairs


def _per_example(ranks: np.ndarray, metric: str, k: int) -> np.ndarray:
    from shared.metrics import ndcg_gains

    return ndcg_gains(ranks, k) if metric == "ndcg@10" else ((ranks >= 0) & (ranks < k)).astype(np.float64)


def markdown(table: dict, pairs: list[dict], args, seeds: list[int]) -> str:
    lines = [f"Protocol {args.protocol}, cold draws {seeds} pooled; command: `python -m benchmarks.study_cold "
             f"--data {args.data} --vectors {args.vectors} --protocol {args.protocol} --out {args.out}`", "",
             "| model | " + " | ".join(f"{s} HR@10 | {s} NDCG@10 | {s} R@50" for s in SLICES) + " |",
             "|---|" + "---|" * (3 * len(SLICES))]
    for model in args.models:
        cells = [f"{table[(model, s)][m]:.4f}" for s in SLICES for m in ("hr@10", "ndcg@10", "recall@50")]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Examples per slice: " + ", ".join(f"{s} {table[(args.models[0], s)]['examples']}" for s in SLICES))
    lines += ["", "| a − b (paired, 95%) | slice | metric | diff | interval |", "|---|---|---|---|---|"]
    for p in pairs:
        if "diff" in p:
            lines.append(f"| {p['a']} − {p['b']} | {p['slice']} | {p['metric']} | {p['diff']:+.4f} | "
                         f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"), help="prepared dataset folder")
    parser.add_argument("--vectors", type=Path, required=True, help="item vectors (.npz) from `lsc4rec embed items`")
    parser.add_argument("--out", type=Path, default=Path("runs/study-cold"), help="output folder")
    parser.add_argument("--protocol", choices=("cold", "cold-stream", "loo"), default="cold",
                        help="cold = LOO test targets; cold-stream = every protocol B stream event; loo = protocol A "
                             "with nothing cold (seeds are then training seeds only)")
    parser.add_argument("--seeds", default="0,1,2", help="cold draws (each also the training seed)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--text-preset", default="compact-text", help="preset of the text-grounded LLM")
    parser.add_argument("--text-set", action="append", default=[], metavar="ARG",
                        help="extra argument for training the text-grounded LLM (repeatable, e.g. --text-set=--config "
                             "--text-set=cloud/llm/presets/smollm2-135m.toml)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        run_draw(args, seed, args.out / f"s{seed}")
    table, pairs = pooled(args, seeds)
    for (model, name), figures in table.items():
        print(json.dumps({"study": "cold", "protocol": args.protocol, "model": model, "slice": name, **figures}))
    for p in pairs:
        print(json.dumps({"study": "cold", "protocol": args.protocol, **p}))
    (args.out / "table.md").write_text(markdown(table, pairs, args, seeds))
    print(f"[study] table: {args.out / 'table.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
