"""Device runtime: per-event latency (re-rank 50 + fusion + consistency + policy), process memory, bytes on the wire."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parents[1]
# Trained exports, first found wins: a `lsc4rec export srm` run, then the one `make demo` serves.
TRAINED = (ROOT / "runs" / "srm-sasrec" / "export" / "onnx", ROOT / "runs" / "demo" / "srm-coop" / "onnx")
STANDIN = ROOT / "runs" / "bench-device" / "standin"

# Exports an untrained SASRec of the reference size (2 blocks, d = 64, T = 50, ML-100K's 1,682 items) when no
# trained export exists: latency and memory do not depend on the weights.
_EXPORT = """
import torch
from pathlib import Path
from device.training.export import export_one
from device.training.models.sasrec import SASRec, SASRecConfig
torch.manual_seed(0)
export_one(SASRec(SASRecConfig(num_items=1682, max_len=50)).eval(), "sasrec-untrained", "standin", "onnx", Path({out!r}))
"""

# Runs in a fresh process pinned to one core: only the device runtime is imported (no torch).
_DEVICE = """
import json, os
from pathlib import Path
os.sched_setaffinity(0, {{{cpu}}})
from device.runtime.cli import bench_figures
figures = bench_figures(Path({model!r}), events={events}, num_candidates=50, history=100, policy="budget:0.1",
                        measure={measure!r}, catalogue={catalogue})
print(json.dumps(figures))
"""


def model_folder() -> tuple[Path, str]:
    """A trained SASRec export if an SRM run or the demo left one, else a cached untrained stand-in."""
    for folder in TRAINED:
        if (folder / "manifest.json").is_file():
            return folder, "trained"
    if not (STANDIN / "onnx" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-c", _EXPORT.format(out=str(STANDIN))], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return STANDIN / "onnx", "untrained stand-in"


def device_figures(model: Path, events: int, cpu: int, measure: str = "lsc4rec", catalogue: int = 0) -> dict:
    """bench_figures in a fresh process pinned to `cpu` (catalogue: a user encoder's stand-in catalogue size)."""
    code = _DEVICE.format(cpu=cpu, model=str(model), events=events, measure=measure, catalogue=catalogue)
    proc = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"device benchmark process failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wire_bytes(num_items: int = 1682, num_candidates: int = 50, seed: int = 0) -> dict:
    """Serialized protobuf sizes of one GetCandidates request (by history length) and response."""
    from shared import wire
    from shared.records import Candidate, CandidateRequest, CandidateResponse

    rng = np.random.default_rng(seed)
    sizes = {}
    for length in (10, 50, 200):
        history = tuple(int(i) for i in rng.choice(np.arange(1, num_items + 1), length, replace=False))
        request = CandidateRequest("user-000123", history, num_candidates, (), "user-000123-17", "20261123T181038Z-013ab7d6")
        sizes[f"request_bytes_history{length}"] = wire.request_to_pb(request).ByteSize()
    items = rng.choice(np.arange(1, num_items + 1), num_candidates, replace=False)
    scores = np.sort(rng.normal(-20, 3, num_candidates))[::-1]
    response = CandidateResponse(tuple(Candidate(int(i), float(s)) for i, s in zip(items, scores)),
                                 "llm-compact-3f2a9c1e", 812.5, "user-000123-17")
    sizes["response_bytes"] = wire.response_to_pb(response).ByteSize()
    sizes["num_candidates"] = num_candidates
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000, help="timed events (default 5000)")
    parser.add_argument("--cpu", type=int, default=0, help="core the device process is pinned to (default 0)")
    args = parser.parse_args(argv)
    model, kind = model_folder()
    figures = device_figures(model, args.events, args.cpu)
    common = {"model": figures["model"], "model_kind": kind, "model_version": figures["model_version"]}
    emit("device_event_latency", seed=0, p50_us=figures["event_p50_us"], p99_us=figures["event_p99_us"],
         mean_us=figures["event_mean_us"], srm_only_p50_us=figures["srm_p50_us"], srm_only_p99_us=figures["srm_p99_us"],
         session_overhead_p50_us=figures["overhead_p50_us"], session_overhead_p99_us=figures["overhead_p99_us"],
         cpu_p50_us=figures["event_cpu_p50_us"], cpu_p99_us=figures["event_cpu_p99_us"],
         session_overhead_cpu_p50_us=figures["overhead_cpu_p50_us"], load_average_1m=os.getloadavg()[0],
         request_rate=figures["request_rate"], onnxruntime=figures["onnxruntime"],
         events=figures["events"], num_candidates=50, policy=figures["policy"], threads=1, pinned_cpu=args.cpu,
         target_p50_us=500, target_p99_us=2000, **common)
    # The demo's request score, regret, scores the whole catalogue on every event (one call instead of 50 items).
    regret = device_figures(model, args.events, args.cpu, measure="regret")
    emit("device_event_latency_regret", seed=0, p50_us=regret["event_p50_us"], p99_us=regret["event_p99_us"],
         cpu_p50_us=regret["event_cpu_p50_us"], session_overhead_p50_us=regret["overhead_p50_us"],
         events=regret["events"], num_candidates=50, measure="regret", threads=1, pinned_cpu=args.cpu,
         target_p50_us=500, target_p99_us=2000, **common)
    int8 = model.parent / "onnx-int8"
    if kind == "trained" and (int8 / "manifest.json").is_file():
        quant = device_figures(int8, args.events, args.cpu)
        emit("device_event_latency_int8", seed=0, p50_us=quant["event_p50_us"], p99_us=quant["event_p99_us"],
             srm_only_p50_us=quant["srm_p50_us"], srm_only_p99_us=quant["srm_p99_us"], events=quant["events"],
             num_candidates=50, threads=1, pinned_cpu=args.cpu, model=quant["model"], rss_mb=quant["rss_mb"])
    emit("device_process_memory", seed=0, rss_mb=figures["rss_mb"], peak_rss_mb=figures["peak_rss_mb"],
         torch_in_sys_modules=figures["torch_loaded"], target_rss_mb=150, **common)
    emit("device_wire_bytes", seed=0, **wire_bytes())


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
