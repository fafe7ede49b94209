"""`lsc4rec data prepare`: fetch ML-100K from the RecBole wheel (or read a local format) and write it."""
from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from shared.cli import emit
from shared.data.dataset import build_dataset, drop_last, load_dataset, write_dataset
from shared.data.readers import READERS
from shared.errors import ChecksumError, DataFormatError, EmptyDatasetError, InvalidArgumentError
from shared.files import download_verified
from shared.manifest import sha256_file
from shared.wheels import fetch_wheel

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/"
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
SPLIT_DEFAULTS = {
    "protocol_a": "leave-one-out: last item = test, the one before = validation",
    "protocol_b": {"stream_length": 10, "cloud_lag": 3, "num_candidates": 50, "slate_size": 10},
}
LICENCE_NOTE = ("MovieLens data (GroupLens, University of Minnesota) may not be redistributed; "
                "it is fetched from the recbole==1.2.1 wheel on PyPI, never stored in this repository.")


def fetch_ml100k(folder: Path) -> Path:
    """Download the RecBole wheel with pip, check its sha256, unpack the three ML-100K files (each checked)."""
    wheel_path = fetch_wheel(RECBOLE_WHEEL, RECBOLE_WHEEL_SHA256, folder)
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, sha256 in ML100K_SHA256.items():
            data = wheel.read(ML100K_MEMBER + name)
            download_verified(folder / name, sha256, lambda out: out.write(data))
    return folder


def verify_ml100k(folder: Path) -> dict[str, str]:
    """Check the three files' sha256; returns them for meta.json."""
    for name, expected in ML100K_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise DataFormatError(path, 0, "-", "missing (expected the RecBole ml-100k.{inter,item,user} files)")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(path, expected, actual)
    return dict(ML100K_SHA256)


def prepare(dataset: str, out: Path, source: Path | None = None, k_core: int = 0):
    """Read (fetching ml-100k if needed), build and write atomically; returns the written Dataset.

    Nothing is written unless everything was read and built: a failure leaves `out` as it was.
    """
    out = Path(out)
    known = ["ml-100k", *READERS.names()]
    if dataset not in known:
        raise InvalidArgumentError("--dataset", dataset, f"not a known dataset (known: {', '.join(known)})")
    if k_core < 0:
        raise InvalidArgumentError("--k-core", k_core, "must be >= 0 (0 = no filtering)")
    check_out(out)
    if dataset == "ml-100k":
        with tempfile.TemporaryDirectory(prefix="lsc4rec-ml100k-") as tmp:
            folder = Path(source) if source else fetch_ml100k(Path(tmp))
            checksums = verify_ml100k(folder)
            events, items = READERS.get("recbole")(folder / "ml-100k.inter")
            data = _build(events, items, k_core, folder, {
                "source": f"MovieLens-100K from the PyPI wheel {RECBOLE_WHEEL} ({ML100K_MEMBER})",
                "sha256": checksums, "licence": LICENCE_NOTE, "splits": SPLIT_DEFAULTS})
    else:
        if source is None:
            raise InvalidArgumentError("--input", None, f"--dataset {dataset} reads from disk: give --input PATH")
        events, items = READERS.get(dataset, field="--dataset")(Path(source))
        data = _build(events, items, k_core, source,
                      {"source": f"{dataset} files at {source}", "splits": SPLIT_DEFAULTS})
    write_dataset(data, out)
    return data


def check_out(out: Path) -> None:
    """Refuse to replace anything but an empty folder or a dataset folder (`--out .` must not wipe a tree)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidArgumentError("--out", str(out), "exists and is not a folder")
    if any(out.iterdir()) and not (out / "meta.json").is_file():
        raise InvalidArgumentError("--out", str(out), "exists and is not a dataset folder (no meta.json); "
                                                      "refusing to replace it")


def _build(events, items, k_core: int, source: Path, meta: dict):
    """build_dataset with a progress bar on an interactive stderr; an empty result names the source."""
    events = tqdm(events, desc="reading", unit=" events", file=sys.stderr, disable=not sys.stderr.isatty())
    try:
        return build_dataset(events, items, k_core=k_core, meta=meta)
    except EmptyDatasetError as exc:
        raise EmptyDatasetError(f"{source}: {exc}") from None


def main(args: argparse.Namespace) -> int:
    data = prepare(args.dataset, args.out, args.input, args.k_core)
    emit({**data.stats(), "dataset": args.dataset, "out": str(args.out), "vocab_hash": data.vocab_hash},
         args.json, title=f"wrote {args.out}")
    return 0


def holdout_main(args: argparse.Namespace) -> int:
    """`lsc4rec data holdout`: write the dataset without each user's last --drop-last interactions."""
    if args.drop_last < 1:
        raise InvalidArgumentError("--drop-last", args.drop_last, "must be >= 1")
    if Path(args.out).resolve() == Path(args.data).resolve():
        raise InvalidArgumentError("--out", str(args.out), "must differ from --data (the original is kept)")
    source = load_dataset(args.data)
    check_out(Path(args.out))
    data = drop_last(source, args.drop_last)
    if len(data.interactions) == 0:
        raise EmptyDatasetError(f"{args.data}: no interaction is left after dropping the last {args.drop_last}")
    write_dataset(data, args.out)
    emit({**data.stats(), "dropped": int(len(source.interactions) - len(data.interactions)),
          "out": str(args.out), "vocab_hash": data.vocab_hash}, args.json, title=f"wrote {args.out}")
    return 0


def stats_main(args: argparse.Namespace) -> int:
    data = load_dataset(args.data)
    emit({**data.stats(), "vocab_hash": data.vocab_hash, "source": data.meta.get("source", "")}, args.json)
    return 0
