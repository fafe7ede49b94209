"""`lsc4rec train srm`, `eval srm` and `export srm` (registrar: nothing heavy is imported here)."""
from __future__ import annotations

import argparse
from pathlib import Path

from device.training import PRESETS
from shared.cli import add_cold_flags, add_json_flag, handler

MODELS = ("sasrec", "gru4rec", "din")


def register(groups: dict) -> None:
    _register_train(groups["train"])
    _register_eval(groups["eval"])
    _register_export(groups["export"])


def _register_train(sub) -> None:
    p = sub.add_parser("srm", help="train an on-device small recommendation model (SASRec, GRU4Rec, DIN)",
                       description="Independent training (full-softmax CE by default), cooperative fine-tuning "
                                   "on a generator's candidate lists (--coop), or adaptive re-training of a "
                                   "deployed checkpoint on fresh events (--resume with --fresh).")
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by `lsc4rec data prepare`")
    p.add_argument("--model", choices=MODELS, default="sasrec", help="architecture (default sasrec)")
    p.add_argument("--out", type=Path, required=True, help="output folder; the checkpoint is OUT/srm.pt")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML preset with [model] and [train] tables (default device/training/presets/<model>.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=5 --set model.hidden=32 (repeatable)")
    p.add_argument("--protocol", choices=("stream", "loo", "cold", "cold-stream"), default="stream",
                   help="training split: stream = protocol B's SRM past (default), loo = protocol A, cold = protocol "
                        "A without protocol C's cold items, cold-stream = protocol B's SRM past without them")
    add_cold_flags(p, "--cold-seed", 0, 0.1)
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides train.seed)")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to warm-start from (with --fresh or --coop)")
    p.add_argument("--fresh", type=Path, default=None,
                   help="TSV of new events (user, item, timestamp; dense ids, header line) for adaptive re-training")
    p.add_argument("--budget-s", type=float, default=20.0, help="time budget of adaptive re-training, seconds")
    p.add_argument("--coop", action="store_true",
                   help="cooperative training: fine-tune --resume (or a fresh independent run) on candidate lists")
    p.add_argument("--generator", default="popularity",
                   help="candidate generator for --coop: 'popularity' or 'llm:FOLDER' (a `train llm` output)")
    p.add_argument("--coop-config", type=Path, default=None, help="TOML with a [coop] table (default device/training/presets/coop.toml)")
    add_json_flag(p)
    p.set_defaults(func=handler("device.training.cli", "train_main"))


def _register_eval(sub) -> None:
    p = sub.add_parser("srm", help="evaluate an SRM checkpoint or exported artifact (full ranking)",
                       description="Protocol A (loo): rank the whole catalogue for each user's test item, with "
                                   "seen items removed (protocol A) and kept (RecBole's rule). With --rerank, "
                                   "re-rank a generator's candidate lists on protocol B instead. Protocol C (cold, "
                                   "cold-stream): the checkpoint's cold draw, seen items removed, figures sliced by "
                                   "the target: cold, tail (1-10 training interactions), warm.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="checkpoint file or folder holding srm.pt")
    src.add_argument("--artifact", type=Path, help="exported folder (model.onnx or model.pte + manifest.json)")
    p.add_argument("--protocol", choices=("loo", "stream", "cold", "cold-stream"), default="loo",
                   help="loo = protocol A test items; stream = the first stream item after each user's past; "
                        "cold = protocol C on the LOO test items, cold-stream = protocol C on every stream event "
                        "(both need a --ckpt trained on that protocol; figures sliced cold/tail/warm)")
    add_cold_flags(p, "--seed", None, None)
    p.add_argument("--per-example", type=Path, default=None, metavar="FILE",
                   help="cold protocols: also write per-example users, targets, slice, rank and NDCG@10 to FILE "
                        "(.npz), for paired bootstrap comparisons")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="which targets (loo only)")
    p.add_argument("--rerank", default=None,
                   help="re-rank candidate lists from 'popularity' or 'llm:FOLDER' on protocol B (needs --ckpt)")
    add_json_flag(p)
    p.set_defaults(func=handler("device.training.cli", "eval_main"))


def _register_export(sub) -> None:
    p = sub.add_parser("srm", help="export an SRM checkpoint to ONNX and/or ExecuTorch (.pte)",
                       description="Writes OUT/onnx/, OUT/onnx-int8/ (with --int8) and OUT/pte/, each holding the "
                                   "model file and manifest.json; parity with eager PyTorch is checked (1e-4).")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or folder holding srm.pt")
    p.add_argument("--format", choices=("onnx", "pte", "all"), default="all", help="which format(s)")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 ONNX model")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_json_flag(p)
    p.set_defaults(func=handler("device.training.cli", "export_main"))


def _load_configs(args, model_name: str):
    from shared.config import from_dict, load_config, resolve_preset
    from device.training.models.common import registry
    from device.training.train import TrainConfig

    # An explicit --config must exist; a model without a shipped preset trains on its code defaults.
    default = PRESETS / f"{model_name}.toml"
    path = resolve_preset(PRESETS, args.config, "--config") if args.config else (default if default.is_file() else None)
    model_over = [o[len("model."):] for o in args.overrides if o.startswith("model.")]
    train_over = [o[len("train."):] for o in args.overrides if o.startswith("train.")]
    bad = [o for o in args.overrides if not o.startswith(("model.", "train."))]
    if bad:
        from shared.errors import ConfigError
        raise ConfigError(bad[0].partition("=")[0], bad[0], "overrides start with model. or train.")
    model_cls = registry()[model_name][1]
    model_cfg = load_config(model_cls, path, model_over + ["num_items=1"], section="model")
    train_cfg = load_config(TrainConfig, path, train_over + ([f"seed={args.seed}"] if args.seed is not None else []),
                            section="train")
    from shared.config import to_dict
    model_dict = to_dict(model_cfg)
    model_dict.pop("num_items")
    return model_dict, train_cfg


def _split(dataset, args) -> tuple:
    """(training split, the cold draw to record in the checkpoint or None)."""
    from shared.data.splits import loo_split, stream_split

    if args.protocol in ("cold", "cold-stream"):
        from shared.data.cold import cold_world

        world = cold_world(dataset, args.protocol, args.cold_fraction, args.cold_seed)
        return world.train, {"cold_seed": args.cold_seed, "cold_fraction": args.cold_fraction}
    return (loo_split(dataset) if args.protocol == "loo" else stream_split(dataset).srm_train()), None


def train_main(args: argparse.Namespace) -> int:
    from shared.cli import emit
    from shared.data.dataset import load_dataset

    dataset = load_dataset(args.data)
    if args.protocol in ("cold", "cold-stream") and (args.fresh is not None or args.coop):
        from shared.errors import ConfigError
        raise ConfigError("protocol", args.protocol, "--coop and --fresh do not hold cold items out; protocol C "
                                                     "trains independently only")
    if args.fresh is not None:
        return _finetune_main(args, dataset)
    if args.coop:
        from device.training.coop import coop_main
        return coop_main(args, dataset)
    from device.training.train import train

    model_dict, train_cfg = _load_configs(args, args.model)
    split, cold = _split(dataset, args)
    _, ckpt = train(args.model, model_dict, train_cfg, split, dataset.num_items, dataset.vocab_hash, out=args.out,
                    protocol=args.protocol, cold=cold)
    emit({"model": args.model, "protocol": args.protocol, "seed": train_cfg.seed, "checkpoint": str(args.out / "srm.pt"),
          "version": ckpt["version"], **(cold or {}), **ckpt["metrics"]}, args.json, "SRM trained (validation figures)")
    return 0


def _finetune_main(args, dataset) -> int:
    from shared.cli import emit
    from shared.errors import ConfigError
    from device.training.finetune import finetune, read_fresh_events

    if args.resume is None:
        raise ConfigError("--resume", None, "adaptive re-training (--fresh) needs the checkpoint to start from")
    sequences, first_fresh = read_fresh_events(args.fresh, dataset)
    path, figures = finetune(args.resume, sequences, args.budget_s, args.out, first_fresh=first_fresh,
                             vocab_hash=dataset.vocab_hash, return_figures=True)
    emit({"checkpoint": str(path), **figures}, args.json, "SRM re-trained on fresh events")
    return 0


def eval_main(args: argparse.Namespace) -> int:
    from shared.cli import emit
    from shared.data.dataset import load_dataset
    from shared.data.splits import Examples, loo_split, stream_split
    from device.training.evaluate import evaluate, evaluate_artifact, model_score_fn

    dataset = load_dataset(args.data)
    if args.rerank and args.protocol in ("cold", "cold-stream"):
        from shared.errors import ConfigError
        raise ConfigError("protocol", args.protocol, "--rerank replays protocol B; it has no cold slices")
    if args.rerank:
        from device.training.coop import rerank_main
        return rerank_main(args, dataset)
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
        from device.training.train import load_checkpoint

        model, ckpt = load_checkpoint(args.ckpt, dataset.vocab_hash)
        figures = evaluate(model_score_fn(model), examples, model.max_len)
        figures.update({"model": ckpt["model"], "version": ckpt["version"],
                        "seed": ckpt["train_config"].get("seed")})
    emit({**header, **figures}, args.json, "SRM evaluation (seen items removed; seen_kept/ = RecBole's rule)")
    return 0


def _cold_eval_main(args, dataset) -> int:
    """Protocol C: full ranking (seen items removed) of the checkpoint's cold world, sliced cold/tail/warm."""
    from shared.cli import emit
    from shared.data.cold import PROTOCOLS, cold_world, recorded_draw
    from shared.errors import ConfigError
    from device.training.evaluate import model_score_fn, rank_examples
    from device.training.train import load_checkpoint

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
    from shared.cli import emit
    from device.training.export import export_checkpoint

    formats = {"onnx": ["onnx"], "pte": ["pte"], "all": ["onnx", "pte"]}[args.format]
    if args.int8 and "onnx" in formats:
        formats.insert(1, "onnx-int8")
    folders = export_checkpoint(args.ckpt, tuple(formats), args.out)
    figures = {}
    for fmt, folder in folders.items():
        from shared.manifest import read_manifest
        m = read_manifest(folder)
        figures.update({f"{fmt}.path": str(folder), f"{fmt}.size_bytes": m.size_bytes,
                        f"{fmt}.parity_max_abs_diff": m.metrics.get("parity_max_abs_diff")})
    emit(figures, args.json, "SRM exported")
    return 0
