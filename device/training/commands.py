"""The handlers of `lsc4rec train srm`, `train ground`, `eval srm` and `export srm` (parsers: device.training.cli).

Each handler reads the dataset and the flags, calls the training, evaluation or export code, and prints the
figures; the work itself lives in the modules below it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from device.training.artifacts import CHECKPOINT_NAME, load_checkpoint
from device.training.configs import coop_config, train_configs
from device.training.coop import CoopConfig, protocol_b_lists, protocol_b_rerank, train_cooperatively
from device.training.evaluate import evaluate, evaluate_artifact, model_score_fn
from device.training.finetune import finetune, read_fresh_events
from device.training.train import train
from shared.cli import emit
from shared.data.cold import PROTOCOLS, cold_world, recorded_draw
from shared.data.dataset import load_dataset
from shared.data.splits import Examples, loo_split, stream_split
from shared.errors import ConfigError
from shared.generator import generator_from_spec
from shared.manifest import read_manifest
from shared.ranking import rank_examples

PROTOCOL_B = "B (session-start list, re-ranked at every stream step, no requests)"


def train_main(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data)
    if args.protocol in ("cold", "cold-stream") and (args.fresh is not None or args.coop):
        raise ConfigError("protocol", args.protocol, "--coop and --fresh do not hold cold items out; protocol C "
                                                     "trains independently only")
    if args.fresh is not None:
        return _finetune_main(args, dataset)
    if args.coop:
        return _coop_main(args, dataset)
    model_dict, train_cfg = train_configs(args.model, args.config, args.overrides, args.seed)
    split, cold = _split(dataset, args)
    _, ckpt = train(args.model, model_dict, train_cfg, split, dataset.num_items, dataset.vocab_hash, out=args.out,
                    protocol=args.protocol, cold=cold)
    emit({"model": args.model, "protocol": args.protocol, "seed": train_cfg.seed,
          "checkpoint": str(args.out / CHECKPOINT_NAME), "version": ckpt["version"], **(cold or {}),
          **ckpt["metrics"]}, args.json, "SRM trained (validation figures)")
    return 0


def ground_main(args: argparse.Namespace) -> int:
    from device.training.grounding import ground_checkpoint

    path, figures = ground_checkpoint(args.ckpt, args.vectors, args.out, seed=args.seed)
    emit({"checkpoint": str(path), **figures}, args.json, "untrained items grounded in their text")
    return 0


def _split(dataset, args) -> tuple:
    """(training split, the cold draw to record in the checkpoint or None)."""
    if args.protocol in ("cold", "cold-stream"):
        world = cold_world(dataset, args.protocol, args.cold_fraction, args.cold_seed)
        return world.train, {"cold_seed": args.cold_seed, "cold_fraction": args.cold_fraction}
    return (loo_split(dataset) if args.protocol == "loo" else stream_split(dataset).srm_train()), None


def _finetune_main(args, dataset) -> int:
    if args.resume is None:
        raise ConfigError("--resume", None, "adaptive re-training (--fresh) needs the checkpoint to start from")
    sequences, first_fresh = read_fresh_events(args.fresh, dataset)
    path, figures = finetune(args.resume, sequences, args.budget_s, args.out, first_fresh=first_fresh,
                             vocab_hash=dataset.vocab_hash, return_figures=True)
    emit({"checkpoint": str(path), **figures}, args.json, "SRM re-trained on fresh events")
    return 0


def _generator(spec: str, dataset, split):
    """'popularity' (counts over the split's training prefixes) or 'llm:FOLDER' (registered by the `lsc4rec` root)."""
    return generator_from_spec(spec, dataset, split.train)


def _coop_main(args, dataset) -> int:
    """`train srm --coop`: start from --resume (or train independently first), train cooperatively on the
    generator's lists (device.training.coop.train_cooperatively), and report both models on protocol B
    re-ranking of the generator's session-start lists."""
    stream = stream_split(dataset)
    split = stream.srm_train()
    config = coop_config(args.coop_config, args.overrides, args.seed)
    if args.resume is not None:
        base, parent = load_checkpoint(args.resume, dataset.vocab_hash)
    else:
        overrides = [o for o in args.overrides if not o.startswith("coop.")]
        model_dict, train_cfg = train_configs(args.model, args.config, overrides, args.seed)
        base, parent = train(args.model, model_dict, train_cfg, split, dataset.num_items, dataset.vocab_hash,
                             out=Path(args.out) / "independent")
    generator = _generator(args.generator, dataset, stream.cloud_train())
    cache = Path(args.out) / "candidate-cache"
    lists = protocol_b_lists(stream, generator, config.num_candidates, cache)
    before = protocol_b_rerank(base, stream, lists)
    model, ckpt = train_cooperatively(base, parent, split, generator, config, dataset.vocab_hash, cache, out=args.out)
    after = protocol_b_rerank(model, stream, lists)
    figures = {"protocol": PROTOCOL_B, "generator": generator.version, "users": len(stream), "seed": config.seed,
               "checkpoint": str(Path(args.out) / CHECKPOINT_NAME), "version": ckpt["version"]}
    figures.update({f"independent/{k}": v for k, v in before.items()})
    figures.update({f"coop/{k}": v for k, v in after.items() if k.startswith("srm/")})
    emit(figures, args.json, "cooperative training (NDCG/HR/MRR over the candidate list)")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data)
    if args.rerank and args.protocol in ("cold", "cold-stream"):
        raise ConfigError("protocol", args.protocol, "--rerank replays protocol B; it has no cold slices")
    if args.rerank:
        return _rerank_main(args, dataset)
    if args.protocol in ("cold", "cold-stream") or (args.protocol == "loo" and args.per_example is not None):
        return _cold_eval_main(args, dataset)
    if args.protocol == "loo":
        split = loo_split(dataset)
        examples = split.test if args.split == "test" else split.valid
    else:
        s = stream_split(dataset)
        examples = Examples(s.users, s.past, [int(x[0]) for x in s.streams])
    header = {"protocol": "A (loo, full ranking)" if args.protocol == "loo" else "B (first stream item, full ranking)",
              "split": args.split if args.protocol == "loo" else "stream[0]"}
    if args.artifact is not None:
        figures = evaluate_artifact(args.artifact, examples, dataset.vocab_hash)
    else:
        model, ckpt = load_checkpoint(args.ckpt, dataset.vocab_hash)
        figures = evaluate(model_score_fn(model), examples, model.max_len)
        figures.update({"model": ckpt["model"], "version": ckpt["version"],
                        "seed": ckpt["train_config"].get("seed")})
    emit({**header, **figures}, args.json, "SRM evaluation (seen items removed; seen_kept/ = RecBole's rule)")
    return 0


def _rerank_main(args, dataset) -> int:
    """`eval srm --rerank GEN --ckpt CKPT`: protocol B re-ranking of the generator's lists."""
    if args.ckpt is None:
        raise ConfigError("--rerank", args.rerank, "needs --ckpt (artifacts are re-ranked by the device runtime)")
    stream = stream_split(dataset)
    model, ckpt = load_checkpoint(args.ckpt, dataset.vocab_hash)
    generator = _generator(args.rerank, dataset, stream.cloud_train())
    cache = Path(args.ckpt if Path(args.ckpt).is_dir() else Path(args.ckpt).parent) / "candidate-cache"
    lists = protocol_b_lists(stream, generator, CoopConfig().num_candidates, cache)
    figures = {"protocol": PROTOCOL_B, "generator": generator.version, "users": len(stream), "model": ckpt["model"],
               "version": ckpt["version"], **protocol_b_rerank(model, stream, lists)}
    emit(figures, args.json, "SRM re-ranking of candidate lists")
    return 0


def _cold_eval_main(args, dataset) -> int:
    """Protocol C: full ranking (seen items removed) of the checkpoint's cold world, sliced cold/tail/warm."""
    if args.ckpt is None:
        raise ConfigError("--artifact", str(args.artifact), "protocol C needs --ckpt (it records the cold draw)")
    model, ckpt = load_checkpoint(args.ckpt, dataset.vocab_hash)
    seed, fraction = recorded_draw(args.protocol, args.seed, args.cold_fraction, ckpt, f"checkpoint {args.ckpt}")
    world = cold_world(dataset, args.protocol, fraction, seed)
    figures = world.figures(rank_examples(model_score_fn(model), world.examples, model.max_len), args.per_example)
    emit({"model": ckpt["model"], "protocol": args.protocol, "description": PROTOCOLS[args.protocol], "seed": seed,
          "cold_fraction": fraction, "version": ckpt["version"], "train_seed": ckpt["train_config"].get("seed"),
          **figures}, args.json, "SRM evaluation, protocol C (seen items removed)")
    return 0


def export_main(args: argparse.Namespace) -> int:
    # onnxscript's graph rewriter (about 1 s to import) is needed by this command only
    from device.training.encoder_export import FORMATS as ENCODER_FORMATS
    from device.training.encoder_export import export_encoder_checkpoint, has_user_encoder
    from device.training.export import export_checkpoint

    every = args.format == ("all",)
    formats = ["onnx", "pte"] if every else [f for f in args.format if f not in ENCODER_FORMATS]
    if args.int8 and "onnx" in formats:
        formats.insert(formats.index("onnx") + 1, "onnx-int8")
    folders = export_checkpoint(args.ckpt, tuple(formats), args.out) if formats else {}
    encoders = [f for f in args.format if f in ENCODER_FORMATS]
    if every and has_user_encoder(load_checkpoint(args.ckpt)[0]):
        encoders = list(ENCODER_FORMATS)
    if encoders:  # one partition head (fitted once) for every encoder format
        dataset = None if args.data is None else load_dataset(args.data)
        folders.update(export_encoder_checkpoint(args.ckpt, args.out, dataset=dataset, formats=tuple(encoders)))
    figures = {}
    for fmt, folder in folders.items():
        m = read_manifest(folder)
        figures.update({f"{fmt}.path": str(folder), f"{fmt}.size_bytes": m.size_bytes,
                        f"{fmt}.parity_max_abs_diff": m.metrics.get("parity_max_abs_diff")})
    emit(figures, args.json, "SRM exported")
    return 0
