"""The native ExecuTorch runner (device/native) against onnxruntime, one thread, 50 candidates, same run:

- native_rerank_latency: per-call p50 of the C++ CLI's own loop (`lsc4rec-native bench`), and of the Python
  backends (NativeReranker through ctypes vs OnnxReranker) taking turns (benchmarks.common.time_interleaved);
- native_session_latency: the device session's per-event p50 (`device.runtime.cli.bench_figures`) with the .pte on
  the native backend vs the .onnx, each in a fresh process pinned to one core, torch and executorch blocked there;
- native_footprint: bytes on disk of the runner and the libraries it loads, and the CLI bench's peak RSS;
- native_encoder_update_latency: the catalogue-free user encoder's incremental update alone (one event's vector
  appended to a user's state): per-call p50 of the C++ CLI's loop (`lsc4rec-native encode-bench`), and of the
  Python states (NativeUserState through ctypes vs onnxruntime's UserState) taking turns;
- native_encoder_session_latency: the session's per-event p50 (`bench_figures`, as `lsc4rec device bench` measures
  a user encoder: vectors from its stand-in cloud, miss-belief measure) with encoder.pte on the native backend vs
  encoder.onnx, each in a fresh process pinned to one core, torch and executorch blocked there.

Models: untrained SASRec and GRU4Rec of the reference shape (ML-100K's 1,682 items, T = 50), exported once into
runs/bench-native/ with device.training.export, and as user encoders (SASRec with rotary positions, the cached
shape; GRU4Rec, the recurrent one) with device.training.encoder_export (latency does not depend on the weights).
Needs `make native`. LSC4REC_BENCH_REPEAT sets the timed calls (2000), LSC4REC_BENCH_EVENTS the session events
(2000).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import best_round_p50_us, emit, percentiles_us, time_interleaved

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench-native"
BUILD = ROOT / "build" / "native"
REPEAT = int(os.environ.get("LSC4REC_BENCH_REPEAT", "2000"))
EVENTS = int(os.environ.get("LSC4REC_BENCH_EVENTS", "2000"))
CANDIDATES = 50
SEED = 0
MODELS = ("sasrec", "gru4rec")
ENCODERS = {"sasrec-rotary": ("sasrec", {"positions": "rotary"}), "gru4rec": ("gru4rec", {})}  # name: model, config
ENCODER_MEASURE = "miss-belief"  # an untrained encoder has no partition head

_EXPORT = """
import torch, warnings
from pathlib import Path
from device.training.export import export_one
from device.training.models import build_model
warnings.simplefilter("ignore")
torch.manual_seed({seed})
model = build_model({name!r}, {{"num_items": 1682, "max_len": 50}}).eval()
for fmt in ("onnx", "pte"):
    export_one(model, {name!r} + "-untrained", "standin", fmt, Path({out!r}))
"""

_EXPORT_ENCODER = """
import torch, warnings
from pathlib import Path
from device.training.encoder_export import FORMATS, export_user_encoder
from device.training.models import build_model
warnings.simplefilter("ignore")
torch.manual_seed({seed})
model = build_model({model!r}, {{"num_items": 1682, "max_len": 50, **{config!r}}}).eval()
for fmt in FORMATS:
    export_user_encoder(model, {name!r} + "-untrained", "standin", Path({out!r}), fmt=fmt)
"""

# A fresh process on one core with torch and executorch blocked: the device runtime alone.
_SESSION = """
import importlib.abc, json, os, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "executorch"):
            raise ImportError(name + " is blocked in this benchmark")
sys.meta_path.insert(0, Block())
os.sched_setaffinity(0, {{{cpu}}})
from pathlib import Path
from device.runtime.cli import bench_figures
figures = bench_figures(Path({model!r}), events={events}, num_candidates={candidates}, history=100,
                        policy="budget:0.1", seed={seed}, measure={measure!r})
figures["executorch_loaded"] = any(m.split(".")[0] == "executorch" for m in sys.modules)
print(json.dumps(figures))
"""


def _export_fresh(folder: Path, code: str) -> Path:
    """Run an export script into an emptied `folder`: every run measures what today's exporters write."""
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return folder


def exported(name: str) -> Path:
    """runs/bench-native/<name>/ with onnx/ and pte/ of one untrained model."""
    return _export_fresh(OUT / name, _EXPORT.format(seed=SEED, name=name, out=str(OUT / name)))


def exported_encoder(name: str) -> Path:
    """runs/bench-native/<name>-encoder/ with user-encoder/ (ONNX) and user-encoder-pte/ of one untrained model."""
    folder = OUT / f"{name}-encoder"
    model, config = ENCODERS[name]
    return _export_fresh(folder, _EXPORT_ENCODER.format(seed=SEED, model=model, config=config, name=name,
                                                        out=str(folder)))


def encoder_cli_bench(pte: Path, cpu: int) -> dict:
    proc = subprocess.run(["taskset", "-c", str(cpu), str(BUILD / "lsc4rec-native"), "encode-bench", "--model",
                           str(pte), "--events", str(REPEAT), "--seed", str(SEED)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"lsc4rec-native encode-bench failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def encoder_updates(folder: Path) -> dict[str, dict]:
    """NativeUserState (ctypes) and onnxruntime's UserState appending the same vectors, taking turns in this process
    (vectors as the stand-in cloud sends them: int8 levels x 0.01); the largest gap between their user vectors."""
    from device.runtime.artifact import load_reranker

    encoders = {"native-pte": load_reranker(folder / "user-encoder-pte", backend="native"),
                "onnx": load_reranker(folder / "user-encoder")}
    dim = encoders["onnx"].dim
    vectors = np.random.default_rng(SEED).integers(-127, 128, (512, dim)).astype(np.float32) * 0.01
    states = {name: encoder.new_state() for name, encoder in encoders.items()}
    gap = 0.0
    for vector in vectors:  # 512 events: the window (T = 50) and the cached ring wrap many times
        gap = max(gap, float(np.abs(states["native-pte"].append(vector) - states["onnx"].append(vector)).max()))

    def append(state):
        rows = iter(np.tile(vectors, (REPEAT // len(vectors) + 2, 1)))
        return lambda: state.append(next(rows))

    samples = time_interleaved({name: append(state) for name, state in states.items()}, repeat=REPEAT)
    out = {name: {**percentiles_us(s["wall"]), "cpu_p50_us": percentiles_us(s["cpu"])["p50_us"],
                  "best_round_p50_us": best_round_p50_us(s["wall"])} for name, s in samples.items()}
    out["max_abs_diff"] = gap
    return out


def cli_bench(pte: Path, cpu: int) -> dict:
    proc = subprocess.run(["taskset", "-c", str(cpu), str(BUILD / "lsc4rec-native"), "bench", "--model", str(pte),
                           "--candidates", str(CANDIDATES), "--calls", str(REPEAT), "--seed", str(SEED)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"lsc4rec-native bench failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def python_backends(folder: Path) -> dict[str, dict]:
    """NativeReranker (ctypes) and OnnxReranker taking turns in this process; trusted calls, as the session makes."""
    from device.runtime.artifact import load_reranker

    rng = np.random.default_rng(SEED)
    rerankers = {"native-pte": load_reranker(folder / "pte", backend="native"), "onnx": load_reranker(folder / "onnx")}
    num_items = rerankers["onnx"].manifest.num_items
    hist = rng.integers(1, num_items + 1, (1, rerankers["onnx"].history_length)).astype(np.int64)
    cand = rng.integers(1, num_items + 1, (1, CANDIDATES)).astype(np.int64)
    gap = float(np.abs(rerankers["native-pte"].score(hist, cand) - rerankers["onnx"].score(hist, cand)).max())
    calls = {name: (lambda r=r: r.score_trusted(hist, cand)) for name, r in rerankers.items()}
    samples = time_interleaved(calls, repeat=REPEAT)
    out = {name: {**percentiles_us(s["wall"]), "cpu_p50_us": percentiles_us(s["cpu"])["p50_us"],
                  "best_round_p50_us": best_round_p50_us(s["wall"])} for name, s in samples.items()}
    out["max_abs_diff"] = gap
    return out


def session(model: Path, cpu: int, measure: str = "lsc4rec") -> dict:
    code = _SESSION.format(cpu=cpu, model=str(model), events=EVENTS, candidates=CANDIDATES, seed=SEED, measure=measure)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"session benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def footprint() -> dict:
    """Bytes on disk: the CLI, the library and the ExecuTorch copies beside them (all that is shipped), plus the
    system libraries they load that are not part of every Linux (libcrypto)."""
    shipped = {p.name: p.stat().st_size for p in sorted(BUILD.iterdir()) if p.is_file() and
               (p.suffix == ".so" or p.name == "lsc4rec-native")}
    ldd = subprocess.run(["ldd", str(BUILD / "lsc4rec-native")], capture_output=True, text=True).stdout
    system = {}
    for line in ldd.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and "libcrypto" in parts[0]:
            path = Path(parts[1].split("(")[0].strip())
            system[path.name] = path.resolve().stat().st_size
    return {"files": shipped, "shipped_bytes": sum(shipped.values()), "system_libraries": system,
            "ldd_mentions_python_or_torch": any(w in ldd for w in ("libpython", "libtorch", "libc10"))}


def main() -> None:
    if not (BUILD / "liblsc4rec_native.so").is_file():
        raise SystemExit(f"{BUILD} has no native runner: run `make native` first")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    emit("native_footprint", seed=SEED, **footprint())
    for name in MODELS:
        folder = exported(name)
        cli = cli_bench(folder / "pte", cpu)
        py = python_backends(folder)
        emit("native_rerank_latency", seed=SEED, model=name, candidates=CANDIDATES, threads=1, calls=REPEAT,
             cli_p50_us=cli["p50_us"], cli_p99_us=cli["p99_us"], cli_peak_rss_mb=cli["peak_rss_mb"],
             cli_load_ms=cli["load_ms"], python_native_p50_us=py["native-pte"]["p50_us"],
             python_onnx_p50_us=py["onnx"]["p50_us"], python_native_cpu_p50_us=py["native-pte"]["cpu_p50_us"],
             python_onnx_cpu_p50_us=py["onnx"]["cpu_p50_us"],
             native_vs_onnx_p50=py["native-pte"]["p50_us"] / py["onnx"]["p50_us"],
             cli_vs_onnx_p50=cli["p50_us"] / py["onnx"]["p50_us"], max_abs_diff_native_onnx=py["max_abs_diff"])
        figures = {fmt: session(folder / fmt, cpu) for fmt in ("pte", "onnx")}
        emit("native_session_latency", seed=SEED, model=name, candidates=CANDIDATES, events=EVENTS,
             native_event_p50_us=figures["pte"]["event_p50_us"], onnx_event_p50_us=figures["onnx"]["event_p50_us"],
             native_vs_onnx_event_p50=figures["pte"]["event_p50_us"] / figures["onnx"]["event_p50_us"],
             native_srm_p50_us=figures["pte"]["srm_p50_us"], onnx_srm_p50_us=figures["onnx"]["srm_p50_us"],
             native_peak_rss_mb=figures["pte"]["peak_rss_mb"], onnx_peak_rss_mb=figures["onnx"]["peak_rss_mb"],
             native_torch_loaded=figures["pte"]["torch_loaded"],
             native_executorch_loaded=figures["pte"]["executorch_loaded"],
             native_onnxruntime_loaded=figures["pte"]["onnxruntime"] is not None)
    for name in ENCODERS:
        folder = exported_encoder(name)
        cli = encoder_cli_bench(folder / "user-encoder-pte", cpu)
        py = encoder_updates(folder)
        emit("native_encoder_update_latency", seed=SEED, model=name, shape=cli["shape"], calls=REPEAT,
             cli_append_p50_us=cli["append_p50_us"], cli_append_p99_us=cli["append_p99_us"],
             cli_rebuild_p50_us=cli["rebuild_p50_us"], cli_peak_rss_mb=cli["peak_rss_mb"], cli_load_ms=cli["load_ms"],
             python_native_p50_us=py["native-pte"]["p50_us"], python_onnx_p50_us=py["onnx"]["p50_us"],
             python_native_cpu_p50_us=py["native-pte"]["cpu_p50_us"],
             python_onnx_cpu_p50_us=py["onnx"]["cpu_p50_us"],
             python_native_best_round_p50_us=py["native-pte"]["best_round_p50_us"],
             python_onnx_best_round_p50_us=py["onnx"]["best_round_p50_us"],
             native_vs_onnx_p50=py["native-pte"]["p50_us"] / py["onnx"]["p50_us"],
             max_abs_diff_native_onnx=py["max_abs_diff"],
             model_bytes={fmt: (folder / fmt / file).stat().st_size for fmt, file in
                          (("user-encoder", "encoder.onnx"), ("user-encoder-pte", "encoder.pte"))})
        figures = {fmt: session(folder / fmt, cpu, ENCODER_MEASURE) for fmt in ("user-encoder-pte", "user-encoder")}
        native, onnx = figures["user-encoder-pte"], figures["user-encoder"]
        emit("native_encoder_session_latency", seed=SEED, model=name, candidates=CANDIDATES, events=EVENTS,
             measure=ENCODER_MEASURE, native_event_p50_us=native["event_p50_us"],
             onnx_event_p50_us=onnx["event_p50_us"], native_event_p99_us=native["event_p99_us"],
             onnx_event_p99_us=onnx["event_p99_us"],
             native_vs_onnx_event_p50=native["event_p50_us"] / onnx["event_p50_us"],
             native_update_p50_us=native["srm_p50_us"], onnx_update_p50_us=onnx["srm_p50_us"],
             native_peak_rss_mb=native["peak_rss_mb"], onnx_peak_rss_mb=onnx["peak_rss_mb"],
             native_torch_loaded=native["torch_loaded"], native_executorch_loaded=native["executorch_loaded"],
             native_onnxruntime_loaded=native["onnxruntime"] is not None,
             load_average_1m=os.getloadavg()[0])


if __name__ == "__main__":
    main()
