"""What grows with the catalogue and what does not: the catalogue-free device at 1.7k, 100k and 1M items.

For each catalogue size N (random item vectors stand in for a trained table; the model's weights do not change any
figure here), one JSON line with:
- cloud: the item vector table's bytes in memory and on disk, the server process's RSS growth when it loads it, and
  the time to look up one answer's rows (50 candidates + 1 missing history item);
- wire: bytes of a request (history of 50 ids in 1..N) and of a response of 50 candidates with and without vectors;
- device, catalogue-free (SASRec with rotary positions, the preset's: cached keys and values; SASRec with learned
  positions: a window re-encoded per event; GRU4Rec: a recurrent step): the model file, the device process's peak
  RSS, per-event p50 (re-rank 50 + fuse + decide, the consumed item's vector received with it) and one incremental
  update alone, in a process pinned to one core that imports no torch;
- device with the item table inside the model (today's "scorer" artifact) at the same N, as the baseline: its
  file size and, where exported, its per-event p50 and RSS (not exported at 1M: its table alone is 256 MB; that
  figure is computed and labelled so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_device import device_figures
from benchmarks.common import emit, percentiles_us

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1682, 100_000, 1_000_000)
DIM, HISTORY_LENGTH = 64, 50

_EXPORT = """
import sys, torch
from pathlib import Path
from device.training.encoder_export import export_user_encoder
from device.training.export import export_one
from device.training.models.gru4rec import GRU4Rec, GRU4RecConfig
from device.training.models.sasrec import SASRec, SASRecConfig
torch.manual_seed(0)
n, out, scorer = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
sas = SASRec(SASRecConfig(num_items=n, max_len=50, positions="rotary")).eval()  # the sasrec preset's positions
export_user_encoder(sas, "sasrec", "standin", out / "sasrec")
if scorer:
    export_one(sas, "sasrec", "standin", "onnx", out / "sasrec")
learned = SASRec(SASRecConfig(num_items=n, max_len=50)).eval()
export_user_encoder(learned, "sasrec", "standin", out / "sasrec-learned")
export_user_encoder(GRU4Rec(GRU4RecConfig(num_items=n, max_len=50)).eval(), "gru4rec", "standin", out / "gru4rec")
"""

_CLOUD = """
import json, sys
from pathlib import Path
def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
from shared.vector_table import VectorTable
before = rss()
table = VectorTable.load(sys.argv[1], "v")
print(json.dumps({"rss_growth_mb": rss() - before}))
"""


def _wire(table, n: int, rng) -> dict:
    from shared import wire
    from shared.records import Candidate, CandidateRequest, CandidateResponse

    history = tuple(int(i) for i in rng.choice(n, HISTORY_LENGTH, replace=False) + 1)
    cands = [int(i) for i in rng.choice(n, 50, replace=False) + 1]
    request = CandidateRequest("user-000123", history, 50, (), "user-000123-17", "20261202T000000Z-0123abcd",
                               with_vectors=True, missing_vectors=history[-1:])
    response = CandidateResponse(tuple(Candidate(i, -float(k)) for k, i in enumerate(cands)), "llm-compact-3f2a9c1e",
                                 812.5, "user-000123-17")
    lookups = []
    for _ in range(300):
        start = time.perf_counter()
        vectors = table.lookup(cands + [history[-1]])
        lookups.append(time.perf_counter() - start)
    with_vectors = CandidateResponse(*response.__dict__.values())
    object.__setattr__(with_vectors, "vectors", vectors)
    return {"request_bytes": wire.request_to_pb(request).ByteSize(),
            "response_bytes_ids_only": wire.response_to_pb(response).ByteSize(),
            "response_bytes_with_vectors": wire.response_to_pb(with_vectors).ByteSize(),
            "lookup_p50_us": percentiles_us(lookups)["p50_us"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="catalogue sizes (default %(default)s)")
    parser.add_argument("--events", type=int, default=3000, help="timed events per device figure (default 3000)")
    parser.add_argument("--cpu", type=int, default=0, help="core the device processes are pinned to (default 0)")
    args = parser.parse_args(argv)
    from shared.vector_table import VectorTable

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in args.sizes:
            out = Path(tmp) / str(n)
            scorer = n <= 100_000
            subprocess.run([sys.executable, "-c", _EXPORT, str(n), str(out), "1" if scorer else "0"], check=True,
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            enc = out / "sasrec" / "user-encoder"
            table_path = enc / "item_vectors.npz"
            meta = json.loads((enc / "manifest.json").read_text())
            table = VectorTable.load(table_path, meta["version"])
            cloud = json.loads(subprocess.run([sys.executable, "-c", _CLOUD, str(table_path)], check=True, cwd=ROOT,
                                              capture_output=True, text=True).stdout)
            figures = {"num_items": n, "cloud_table_bytes": int(table.values.nbytes + table.scales.nbytes),
                       "cloud_table_file_bytes": table_path.stat().st_size,
                       "cloud_rss_growth_mb": cloud["rss_growth_mb"], **_wire(table, n, rng)}
            for name in ("sasrec", "sasrec-learned", "gru4rec"):
                folder = out / name / "user-encoder"
                dev = device_figures(folder, args.events, args.cpu, measure="miss-belief", catalogue=n)
                figures.update({f"{name}_model_bytes": (folder / "encoder.onnx").stat().st_size,
                                f"{name}_event_p50_us": dev["event_p50_us"], f"{name}_event_p99_us": dev["event_p99_us"],
                                f"{name}_update_p50_us": dev["srm_p50_us"], f"{name}_peak_rss_mb": dev["peak_rss_mb"],
                                f"{name}_torch_loaded": dev["torch_loaded"]})
            if scorer:
                folder = out / "sasrec" / "onnx"
                dev = device_figures(folder, args.events, args.cpu, measure="miss-belief")
                figures.update({"scorer_model_bytes": (folder / "model.onnx").stat().st_size,
                                "scorer_event_p50_us": dev["event_p50_us"], "scorer_peak_rss_mb": dev["peak_rss_mb"]})
            else:  # its item table alone, float32, plus the encoder's weights
                figures.update({"scorer_model_bytes_computed": n * DIM * 4 + figures["sasrec_model_bytes"]})
            emit("scale_catalogue_free", seed=0, load_average_1m=os.getloadavg()[0], events=args.events,
                 targets={"event_p50_us": 100, "update_p50_us": 30, "model_bytes": 1 << 20, "peak_rss_mb": 100,
                          "response_bytes_with_vectors": 6 * 1024}, **figures)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
