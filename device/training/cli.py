"""`lsc4rec train srm`, `eval srm` and `export srm`: the parsers (nothing heavy is imported here; the handlers
are device.training.commands, imported when a command runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from device.training.models import MODELS
from shared.cli import add_cold_flags, add_json_flag, handler

COMMANDS = "device.training.commands"


class RegisteredModels:
    """argparse `choices` for --model that ask the model registry only when a value is checked or the names are
    listed (an error, --help): the registry imports the models, and with them torch."""

    def __contains__(self, name: object) -> bool:
        return name in MODELS

    def __iter__(self):
        return iter(MODELS.names())


def register(groups: dict) -> None:
    _register_train(groups["train"])
    _register_eval(groups["eval"])
    _register_export(groups["export"])


def _register_train(sub) -> None:
    p = sub.add_parser("srm", help="train an on-device small recommendation model (e.g. SASRec, GRU4Rec, DIN)",
                       description="Independent training (full-softmax CE by default), cooperative fine-tuning "
                                   "on a generator's candidate lists (--coop), or adaptive re-training of a "
                                   "deployed checkpoint on fresh events (--resume with --fresh).")
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by `lsc4rec data prepare`")
    p.add_argument("--model", choices=RegisteredModels(), default="sasrec", metavar="MODEL",
                   help="architecture: a model registered in device/training/models (default sasrec; a wrong "
                        "name lists them)")
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
    p.set_defaults(func=handler(COMMANDS, "train_main"))
    p = sub.add_parser("ground", help="give an SRM's untrained items rows mapped from their text vectors",
                       description="Fits a ridge map from item text vectors to the checkpoint's item table on the "
                                   "items it trained on (strength by 5-fold cross-validation on them) and writes a "
                                   "new checkpoint whose untrained items have the mapped rows, so that a history "
                                   "holding one is encoded with its row instead of noise (as candidates they keep "
                                   "the neutral score); everything else is unchanged.")
    p.add_argument("--ckpt", type=Path, required=True, help="SRM checkpoint (a folder with srm.pt, or the file)")
    p.add_argument("--vectors", type=Path, required=True,
                   help="text vectors of the same catalogue, as `lsc4rec embed items` writes them (measured best: "
                        "--encoder minilm --no-whiten)")
    p.add_argument("--out", type=Path, required=True, help="output folder (OUT/srm.pt) or .pt path; not the input")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    add_json_flag(p)
    p.set_defaults(func=handler(COMMANDS, "ground_main"))


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
    p.set_defaults(func=handler(COMMANDS, "eval_main"))


EXPORT_FORMATS = ("onnx", "pte", "user-encoder", "user-encoder-pte")


def _formats(text: str) -> tuple[str, ...]:
    """`--format`: "all" or a comma-separated list of EXPORT_FORMATS."""
    if text == "all":
        return ("all",)
    parts = tuple(dict.fromkeys(p.strip() for p in text.split(",")))
    bad = [p for p in parts if p not in EXPORT_FORMATS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: give all or some of {', '.join(EXPORT_FORMATS)}, comma-separated")
    return parts


def _register_export(sub) -> None:
    p = sub.add_parser("srm", help="export an SRM checkpoint to ONNX and/or ExecuTorch (.pte)",
                       description="Writes OUT/onnx/, OUT/onnx-int8/ (with --int8), OUT/pte/, OUT/user-encoder/ and "
                                   "OUT/user-encoder-pte/, each holding the model file and manifest.json; parity with "
                                   "eager PyTorch is checked (1e-4). user-encoder is the catalogue-free device model "
                                   "(SASRec, GRU4Rec): encoder.onnx (user-encoder-pte: encoder.pte, for the native "
                                   "ExecuTorch runner) for the device, item_vectors.npz for the cloud.")
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint file or folder holding srm.pt")
    p.add_argument("--format", type=_formats, default="all", metavar="FMT[,FMT]",
                   help="comma-separated formats among onnx, pte, user-encoder, user-encoder-pte, or all (default): "
                        "onnx, pte and, for a model with a user vector, user-encoder and user-encoder-pte")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 ONNX model")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--data", type=Path, default=None,
                   help="the dataset the SRM was trained on: the user encoder then also gets a partition head (fitted "
                        "on its training histories, the last 20 interactions of each user left out), which the "
                        "est-regret request measure needs")
    add_json_flag(p)
    p.set_defaults(func=handler(COMMANDS, "export_main"))
