"""Serving cost of each cloud LLM preset on the ML-100K catalogue: p50 at batch 1 and requests/s at batch 32.

Every preset's generator is built with its real architecture (the pretrained SmolLM2 blocks included) and random
item tables (speed does not depend on the weights: a text-grounded table is written into the plain model's token
embedding, so grounding costs nothing at serving time). The presets take turns in interleaved rounds; ratios are
against `compact` in the same run.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.common import emit, percentiles_us, time_interleaved

N = 50
PRESETS = ("compact", "compact-text", "smollm2-135m:2", "smollm2-135m:4", "smollm2-135m:6")


def generator(preset: str, ds, seed: int):
    """An LLMGenerator of `preset` (`smollm2-135m:K` = its first K pretrained blocks) over the catalogue."""
    from cloud.llm.generate import LLMGenerator
    from cloud.llm.model import build_model
    from cloud.llm.semantic_ids import atomic_index
    from cloud.llm.train import load_llm_config

    name, _, layers = preset.partition(":")
    config = load_llm_config(name, overrides=[f"model.layers={layers}"] if layers else [])
    index = atomic_index(ds.items)
    model = build_model(config.model, index.vocab_size, index.depth, seed)
    return LLMGenerator(model, index, config.model.max_history), sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"), help="dataset folder (synthetic if absent)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="presets; smollm2-135m:K keeps K blocks")
    parser.add_argument("--repeat", type=int, default=40, help="batch-1 calls per preset (batch 32: a quarter)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's generator_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from shared.data.dataset import load_dataset
    from tests.conftest import synthetic_dataset

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data) if (args.data / "meta.json").is_file() else synthetic_dataset(943, 1682, 20, 200)
    rng = np.random.default_rng(args.seed)
    seqs = [s for s in ds.sequences() if len(s) > 5]
    built = {p: generator(p, ds, args.seed) for p in args.presets.split(",")}
    for batch, repeat in ((1, args.repeat), (32, max(4, args.repeat // 4))):
        hists = [list(map(int, seqs[i][-50:])) for i in rng.choice(len(seqs), batch, replace=False)]
        samples = time_interleaved({p: (lambda g=g: g.generate(hists, N)) for p, (g, _) in built.items()},
                                   repeat=repeat, rounds=4, warmup=2)
        base = np.median(samples["compact"]["wall"]) if "compact" in samples else None
        for preset, times in samples.items():
            stats = percentiles_us(times["wall"])
            emit("llm_preset_generate", args.seed, preset=preset, batch=batch, num_candidates=N,
                 rps=batch / np.median(times["wall"]), parameters=built[preset][1], threads=args.threads,
                 vs_compact=(np.median(times["wall"]) / base) if base else None,
                 load_avg_1m=os.getloadavg()[0], **stats)


if __name__ == "__main__":
    main()
