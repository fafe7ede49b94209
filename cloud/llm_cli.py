"""`lsc4rec train llm` and `lsc4rec eval llm` (torch is imported when a model is built or loaded)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloud.llm import load_generator
from cloud.llm.evaluate import evaluate_loo, ranks_for
from cloud.llm.train import PROTOCOLS as TRAIN_PROTOCOLS, load_llm_config, train
from shared.cli import add_json_flag, emit, handler
from shared.data.cold import PROTOCOLS, cold_world, recorded_draw
from shared.data.dataset import load_dataset
from shared.item_vectors import load_item_vectors, read_meta, read_whitening


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
                       help="model preset: compact (from scratch, id tokens; the default), compact-text (from "
                            "scratch, text-grounded item tokens; needs --vectors), smollm2-135m (the first "
                            "model.layers pretrained SmolLM2-135M blocks on text-grounded item tokens; needs "
                            "--vectors), compact-semantic (semantic-id tokens), tiny (tests), folder (set model.folder=DIR): the files "
                            "in cloud/llm/presets/, or a path to a TOML file; --config's values go over it")
    train.add_argument("--vectors", type=Path, default=None,
                       help="item vectors from `lsc4rec embed items` (.npz): ground the item tokens in item text")
    train.add_argument("--out", type=Path, required=True, help="output folder for the trained model")
    train.add_argument("--seed", type=int, default=None, help="seed for init, shuffling and k-means (train.seed)")
    train.add_argument("--protocol", choices=TRAIN_PROTOCOLS, default=None,
                       help="training split: stream = protocol B cloud split (default), loo = protocol A, cold / "
                            "cold-stream = protocol A / B with a seeded 10%% of the items (--cold-seed) removed from "
                            "training (protocol C)")
    train.add_argument("--cold-seed", type=int, default=None, help="seed of the cold-item draw (train.cold_seed, 0)")
    train.add_argument("--config", type=Path, default=None, help="TOML file with [model], [tokenizer], [train]")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=10 (repeatable)")
    add_json_flag(train)
    train.set_defaults(func=handler("cloud.llm_cli", "train_main"))

    ev = groups["eval"].add_parser(
        "llm", help="evaluate a trained cloud LM",
        description="Protocol A (leave-one-out): HR/NDCG/MRR @ 5, 10, 20, 50 and recall@50 of the "
                    "generator's ranked N-item list for every user's last item. Protocol C (--protocol cold: the "
                    "same targets; cold-stream: every protocol B stream event): the same figures on the cold, tail "
                    "(<= 10 training interactions) and warm targets, keys cold/hr@10, tail/ndcg@10, ...")
    ev.add_argument("--data", type=Path, required=True, help="dataset folder written by `data prepare`")
    ev.add_argument("--model", type=Path, required=True, help="folder written by `lsc4rec train llm`")
    ev.add_argument("--protocol", choices=tuple(PROTOCOLS), default="loo",
                    help="loo = protocol A; cold / cold-stream = protocol C on LOO targets / stream events (the model "
                         "must be trained with the same --protocol and cold seed)")
    ev.add_argument("--seed", type=int, default=None,
                    help="cold-item draw (default: the one the model was trained with; another one is refused)")
    ev.add_argument("--per-example", type=Path, default=None, metavar="FILE",
                    help="also write per-example users, targets, slice, rank and NDCG@10 to FILE (.npz), for paired "
                         "bootstrap comparisons (the figures are then sliced cold/tail/warm, also for loo)")
    ev.add_argument("--n", type=int, default=50, help="candidate list length (full ranking = this list)")
    ev.add_argument("--keep-seen", action="store_true",
                    help="do not remove the user's seen items (RecBole's rule, for comparison)")
    ev.add_argument("--beam-width", type=int, default=0, help="beams kept per level (0 = n)")
    ev.add_argument("--cold-boost", type=float, default=None,
                    help="text-grounded models: log-probability bonus of items with no training interaction "
                         "(default: the model's model.cold_boost)")
    ev.add_argument("--threads", type=int, default=2, help="torch threads")
    add_json_flag(ev)
    ev.set_defaults(func=handler("cloud.llm_cli", "eval_main"))


def train_main(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides += [f"train.seed={args.seed}", f"tokenizer.seed={args.seed}"]
    if args.protocol is not None:
        overrides.append(f"train.protocol={args.protocol}")
    if args.cold_seed is not None:
        overrides.append(f"train.cold_seed={args.cold_seed}")
    config = load_llm_config(args.preset, args.config, overrides)
    dataset = load_dataset(args.data)
    vectors, meta, whitening = (None, None, None)
    if args.vectors is not None:
        vectors, meta = load_item_vectors(args.vectors, dataset), {**read_meta(args.vectors), "path": str(args.vectors)}
        whitening = read_whitening(args.vectors)  # kept beside the model: items added later are whitened alike
    _, metrics = train(dataset, config, out=args.out, item_vectors=vectors, vectors_meta=meta,
                       vectors_whitening=whitening)
    figures = {k: v for k, v in metrics.items() if k != "history"}
    figures.update({"seed": config.train.seed, "out": str(args.out)})
    emit(figures, args.json, f"trained llm -> {args.out}")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data)
    generator = load_generator(args.model, dataset, beam_width=args.beam_width, threads=args.threads,
                               cold_boost=args.cold_boost)
    config = json.loads((args.model / "config.json").read_text())
    trained = {"seed": config["train"]["seed"], "model": str(args.model), "version": generator.version,
               "trained_on": config["train"]["protocol"]}
    if args.protocol == "loo" and args.per_example is None:
        figures = evaluate_loo(generator, dataset, n=args.n, keep_seen=args.keep_seen)
        figures.update(trained)
        keys = [k for k in figures if not k.startswith("recall@") or k == "recall@50"]
        emit({k: figures[k] for k in keys}, args.json, "llm evaluation")
        return 0
    seed, fraction = recorded_draw(args.protocol, args.seed, None, config["train"], f"model {args.model}")
    world = cold_world(dataset, args.protocol, fraction, seed)
    figures = world.figures(ranks_for(generator, world.examples, args.n, args.keep_seen), args.per_example)
    emit({**figures, **trained, "protocol": args.protocol, "description": PROTOCOLS[args.protocol], "seed": seed,
          "cold_fraction": fraction, "train_seed": trained["seed"]}, args.json, "llm evaluation (protocol C)")
    return 0
