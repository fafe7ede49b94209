"""The aarch64 runner (build/native-aarch64, from build-aarch64.sh) under qemu-user against eager torch, ONNX
(onnxruntime) and, where `make native` built it, the x86_64 runner: the same .pte, exported here on x86_64.

Models: untrained SASRec and GRU4Rec of the reference shape (ML-100K's 1,682 items, T = 50, seed 0), as
benchmarks/bench_native.py exports them, into BUILD/parity/. Each model scores ROWS seeded (history, 50 candidates)
rows, short and left-padded histories included, through `lsc4rec-native score`, on two emulated CPUs: cortex-a76
(Armv8.2 NEON, a phone's big core) and qemu's `max` (SVE2 and SME too, which XNNPACK's kernels pick up). Then
`lsc4rec-native bench` runs on the cortex-a76 for a figure that is EMULATED (qemu's TCG translating Arm code on this
x86_64 host), not an Arm speed.

One JSON line per figure on stdout; exit code 1 when a max |diff| exceeds the tolerance (1e-5, as
tests/device/test_native.py). Run by `device/native/cross/build-aarch64.sh --check`.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-5
MODELS = ("sasrec", "gru4rec")
REFERENCE = {"num_items": 1682, "max_len": 50}
CANDIDATES = 50
SEED = 0
TRIPLE = "aarch64-linux-gnu"
# -L: the cross glibc (libc6-arm64-cross) is the guest's root, so its ld-linux-aarch64.so.1 is the loader. That
# loader must load *its own* libc.so.6: with libssl-dev:arm64 installed, Debian's multiarch libc6:arm64 is there too
# (a different build of 2.36 in /usr/lib/aarch64-linux-gnu, listed first in the host's ld.so.cache), and a loader of
# one build with the libc of another corrupts glibc's private state (the first pthread_create spins forever). So the
# guest's LD_LIBRARY_PATH puts the cross libc first (/lib under -L) and the arm64 libcrypto after it.
QEMU = ["qemu-aarch64", "-L", f"/usr/{TRIPLE}", "-E", f"LD_LIBRARY_PATH=/lib:/usr/lib/{TRIPLE}"]
# The emulated CPUs scored on; the bench runs on the first (under `max` it is ~12x slower again: TCG emulates the SME
# kernels XNNPACK selects there one helper call at a time).
CPUS = ("cortex-a76", "max")


def export(out: Path) -> dict[str, Path]:
    """{name: folder with pte/ and onnx/}, exported once (kept in `out`)."""
    import torch

    from device.training.export import export_one
    from device.training.models import build_model

    folders = {}
    for name in MODELS:
        folder = out / name
        if not all((folder / fmt / "manifest.json").is_file() for fmt in ("pte", "onnx")):
            torch.manual_seed(SEED)
            model = build_model(name, dict(REFERENCE)).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for fmt in ("pte", "onnx"):
                    export_one(model, f"{name}-untrained", "standin", fmt, folder)
        folders[name] = folder
    return folders


def rows(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (history, candidates) rows: a full history, then ever shorter ones (the runner left-pads with 0)."""
    rng = np.random.default_rng(SEED)
    out = []
    for i in range(count):
        length = max(1, REFERENCE["max_len"] - i * REFERENCE["max_len"] // max(count, 1))
        out.append((rng.integers(1, REFERENCE["num_items"] + 1, length),
                    rng.integers(1, REFERENCE["num_items"] + 1, CANDIDATES)))
    return out


def padded(history: np.ndarray) -> np.ndarray:
    row = np.zeros((1, REFERENCE["max_len"]), dtype=np.int64)
    row[0, -len(history):] = history
    return row


def cli(command: list[str], *args: str) -> dict:
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"parity: {' '.join(command[-3:])} {args[0]} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def cli_scores(command: list[str], pte: Path, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    ids = lambda values: ",".join(str(int(v)) for v in values)  # noqa: E731
    out = cli(command, "score", "--model", str(pte), "--history", ids(history), "--candidates", ids(candidates))
    return np.asarray(out["scores"], dtype=np.float32)


def emit(figure: str, **values) -> None:
    print(json.dumps({"figure": figure, **values, "seed": SEED, "host": platform.machine()}, sort_keys=True),
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "native-aarch64", help="the aarch64 build")
    parser.add_argument("--x86", type=Path, default=ROOT / "build" / "native", help="the x86_64 build, if any")
    parser.add_argument("--rows", type=int, default=4, help="scored rows per model")
    parser.add_argument("--calls", type=int, default=200, help="timed calls of the emulated bench")
    args = parser.parse_args()

    aarch64 = args.build.resolve() / "lsc4rec-native"
    if not aarch64.is_file():
        raise SystemExit(f"parity: {aarch64} does not exist: run device/native/cross/build-aarch64.sh first")
    x86 = args.x86.resolve() / "lsc4rec-native"
    runners = {f"aarch64-{cpu}": [*QEMU, "-cpu", cpu, str(aarch64)] for cpu in CPUS}
    references = ["eager", "onnx"]
    if x86.is_file():
        runners["x86_64"] = [str(x86)]
        references.append("x86_64")
    else:
        print(f"parity: no x86_64 runner at {x86} (`make native`): comparing with eager torch and ONNX only",
              file=sys.stderr)

    import torch

    from device.runtime.artifact import load_reranker
    from device.training.models import build_model

    failed = False
    for name, folder in export(args.build.resolve() / "parity").items():
        torch.manual_seed(SEED)
        model = build_model(name, dict(REFERENCE)).eval()  # the same seeded weights as the export
        onnx = load_reranker(folder / "onnx")
        gaps = {(cpu, ref): 0.0 for cpu in CPUS for ref in references}
        for history, candidates in rows(args.rows):
            got = {who: cli_scores(command, folder / "pte", history, candidates) for who, command in runners.items()}
            with torch.no_grad():
                got["eager"] = model(torch.from_numpy(padded(history)),
                                     torch.from_numpy(candidates[None].astype(np.int64))).numpy()[0]
            got["onnx"] = onnx.score(padded(history), candidates[None].astype(np.int64))[0]
            for cpu, ref in gaps:
                gaps[cpu, ref] = max(gaps[cpu, ref], float(np.abs(got[f"aarch64-{cpu}"] - got[ref]).max()))
        for cpu in CPUS:
            ok = all(gaps[cpu, ref] <= TOLERANCE for ref in references)
            failed |= not ok
            emit("aarch64_qemu_parity", model=name, qemu_cpu=cpu, rows=args.rows, candidates=CANDIDATES,
                 tolerance=TOLERANCE, ok=ok, **{f"max_abs_diff_vs_{ref}": gaps[cpu, ref] for ref in references})
        bench = cli(runners[f"aarch64-{CPUS[0]}"], "bench", "--model", str(folder / "pte"), "--candidates",
                    str(CANDIDATES), "--calls", str(args.calls), "--seed", str(SEED))
        emit("aarch64_qemu_bench", model=name, qemu_cpu=CPUS[0], emulated=True,
             note="qemu-user TCG on an x86_64 host: an emulation figure, not an aarch64 speed",
             **{k: bench[k] for k in ("calls", "num_candidates", "load_ms", "p50_us", "p99_us", "peak_rss_mb")})
    if failed:
        print(f"parity: a max |diff| exceeds {TOLERANCE}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
