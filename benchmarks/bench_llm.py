"""Cloud LLM candidate generation speed: our batched trie beam search vs `model.generate()` with prefix_allowed_tokens_fn."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks.common import emit, percentiles_us, time_calls

N = 50
BATCHES = (1, 8, 32)


def _setup(kind: str, data: Path, model_dir: Path | None, seed: int):
    """A compact-preset generator (trained weights if `model_dir` holds one of this kind) and real histories."""
    import torch

    from cloud.llm.generate import LLMGenerator
    from cloud.llm.model import ModelConfig, build_model
    from cloud.llm.semantic_ids import TokenizerConfig, build_index
    from shared.data.dataset import load_dataset
    from tests.conftest import synthetic_dataset

    ds = load_dataset(data) if (data / "meta.json").is_file() else synthetic_dataset(943, 1682, 20, 200, seed)
    if model_dir is not None and (model_dir / "item_index.json").is_file():
        from cloud.llm import load_generator

        gen = load_generator(model_dir, ds)
        if gen.index.kind == kind:
            return gen, ds, "trained"
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(ds.num_items, 32)) if kind == "semantic" else None  # speed does not depend on them
    index = build_index(ds.items, TokenizerConfig(kind=kind, levels=3, codebook_size=32), embeddings=emb)
    config = ModelConfig()
    model = build_model(config, index.vocab_size, index.depth, seed)
    torch.manual_seed(seed)
    return LLMGenerator(model, index, config.max_history), ds, "random weights (speed only)"


def _histories(ds, batch: int, rng: np.random.Generator, max_history: int) -> list[list[int]]:
    seqs = [s for s in ds.sequences() if len(s) > 5]
    picks = rng.choice(len(seqs), batch, replace=False)
    return [list(map(int, seqs[p][-max_history:])) for p in picks]


def baseline(gen, histories: list[list[int]], n: int):
    """The same work through HF generate(): n beams, n returned sequences, trie via prefix_allowed_tokens_fn."""
    import torch

    index = gen.index
    ids, mask, _ = gen.prompt(histories)
    prompt_len = ids.shape[1]
    blocked = [set(h) for h in histories]
    children = {}  # (level, node) -> allowed vocab ids, ignoring blocked items (the baseline cannot)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        gen_tokens = sent[prompt_len:].tolist()
        level, node = len(gen_tokens), 0
        for l, tok in enumerate(gen_tokens):
            code = tok - index.offsets[l]
            if level >= index.depth or node < 0 or not 0 <= code < index.sizes[l]:
                return [0]  # a dead filler beam (its score is -inf): any token keeps generate() going
            node = int(index.child[l][node, code])
        if level >= index.depth or node < 0:
            return [0]
        key = (level, node)
        if key not in children:
            row = index.child[level][node]
            children[key] = (np.flatnonzero(row >= 0) + index.offsets[level]).tolist()
        if level == index.depth - 1:
            row = index.child[level][node]
            return [t for t in children[key] if int(row[t - index.offsets[level]]) not in blocked[batch_id // n]] or [0]
        return children[key]

    with torch.inference_mode():
        return gen.model.generate(input_ids=ids, attention_mask=mask, num_beams=n, num_return_sequences=n,
                                  max_new_tokens=index.depth, min_new_tokens=index.depth, do_sample=False,
                                  length_penalty=0.0, prefix_allowed_tokens_fn=allowed, pad_token_id=0,
                                  eos_token_id=None)


def run(kind: str, data: Path, model_dir: Path | None, seed: int, repeat: int, baseline_repeat: int,
        baseline_max_batch: int = 32) -> None:
    import torch

    gen, ds, weights = _setup(kind, data, model_dir, seed)
    rng = np.random.default_rng(seed)
    common = {"kind": kind, "num_candidates": N, "weights": weights, "threads": torch.get_num_threads(),
              "code_depth": gen.index.depth, "max_history": gen.max_history,
              "load_avg_1m": os.getloadavg()[0]}  # the 2 cores are shared: read every figure with the load
    p50 = {}
    for batch in BATCHES:
        hist = _histories(ds, batch, rng, gen.max_history)
        ours = time_calls(lambda: gen.generate(hist, N), repeat=max(3, repeat // batch), warmup=1)
        stats = percentiles_us(ours)
        p50[batch] = stats["p50_us"]
        emit("llm_generate", seed, batch=batch, rps=batch / np.median(ours), **stats, **common)
        if baseline_repeat and batch <= baseline_max_batch:
            base = time_calls(lambda: baseline(gen, hist, N), repeat=max(1, baseline_repeat // batch), warmup=1)
            bstats = percentiles_us(base)
            emit("llm_generate_baseline_hf_generate", seed, batch=batch, rps=batch / np.median(base),
                 speedup=bstats["p50_us"] / stats["p50_us"], **bstats, **common)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"), help="dataset folder (synthetic if absent)")
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("LSC4REC_LLM_MODEL", "runs/llm-compact/atomic-s0")),
                        help="trained model folder (random compact weights if absent: speed does not depend on them)")
    parser.add_argument("--kinds", default="atomic,semantic", help="item tokenizers to time")
    parser.add_argument("--repeat", type=int, default=64, help="calls timed at batch 1 (fewer at larger batches)")
    parser.add_argument("--baseline-repeat", type=int, default=16, help="generate() calls at batch 1 (0 = skip)")
    parser.add_argument("--baseline-max-batch", type=int, default=32, help="largest batch timed with generate()")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    for kind in args.kinds.split(","):
        run(kind, args.data, args.model, args.seed, args.repeat, args.baseline_repeat, args.baseline_max_batch)


if __name__ == "__main__":
    main()
