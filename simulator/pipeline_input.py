"""`lsc4rec pipeline`'s handler: the user's interaction file made into a plan (its format told from its name when
--format is auto, its name and size recorded for the data stage) and run. Reading and checking the file is the data
stage (shared.data.prepare): bad input ends with exit code 2 and one line naming the file, line and field."""
from __future__ import annotations

import argparse
from pathlib import Path

from shared.data.prepare import prepare as write_dataset
from shared.data.readers import READERS
from shared.errors import DataFormatError, InvalidArgumentError
from simulator.pipeline_options import parse_seeds
from simulator.pipeline_plan import Plan
from simulator.pipeline_run import run


def main(args: argparse.Namespace) -> int:
    """`lsc4rec pipeline`."""
    source = Path(args.data).resolve()
    fmt = detect_format(source) if args.format == "auto" else args.format
    if fmt not in _formats():
        raise InvalidArgumentError("--format", fmt, f"not a known format (known: auto, {', '.join(_formats())})")
    if args.k_core < 0:
        raise InvalidArgumentError("--k-core", args.k_core, "must be >= 0 (0 = no filtering)")
    out = Path(args.out).resolve()
    data = out / "data"
    # The stages run from the repository root: a folder or file the user names is made absolute first.
    for key in ("llm", "srm_indep", "srm_coop"):
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    if args.srm_preset and (args.srm_preset.endswith(".toml") or Path(args.srm_preset).exists()):
        args.srm_preset = str(Path(args.srm_preset).resolve())

    def prepare():
        return write_dataset(fmt, data, source, args.k_core)

    plan = Plan(out=out, data=data, prepare=prepare, data_label=f"read and prepare {source.name} ({fmt})",
                data_settings={"format": fmt, "k_core": args.k_core, **_fingerprint(source)}, opts=args,
                source=str(source), tag="pipeline", summary_file="pipeline.json", announce_data=False,
                as_json=args.json, seeds=parse_seeds(args.seeds))
    run(plan)
    return 0


def _formats() -> list[str]:
    return list(READERS.names())


def detect_format(path: Path) -> str:
    """The reader of `path` from its name (see --format auto); refuses what the name does not tell."""
    if not path.exists():
        raise DataFormatError(path, 0, "-", "no such file or folder")
    if path.is_dir():
        for name, fmt in (("u.data", "movielens-100k-raw"), ("ratings.dat", "movielens-1m")):
            if (path / name).is_file():
                return fmt
        if any(path.glob("*.inter")):
            return "recbole"
        raise InvalidArgumentError("--format", "auto", f"{path} holds no u.data, ratings.dat or *.inter; give "
                                                       f"--format (known: {', '.join(_formats())})")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if name == "u.data":
        return "movielens-100k-raw"
    if name == "ratings.dat":
        return "movielens-1m"
    if suffix == ".inter":
        return "recbole"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise InvalidArgumentError("--format", "auto", f"cannot tell the format of {path.name} from its name; give "
                                                   f"--format (known: {', '.join(_formats())})")


def _fingerprint(path: Path) -> dict:
    """What identifies the user's data for the data stage's record: its name and size (a moved file is reused)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"name": path.name, "bytes": sum(p.stat().st_size for p in files)}
