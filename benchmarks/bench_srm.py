"""SRM re-ranking speed for one user, single thread: torch eager vs onnxruntime fp32/int8 vs ExecuTorch.

Also prints each exported variant's file size and its protocol A NDCG@10 (seen items removed).
Uses an existing checkpoint (LSC4REC_SRM_CKPT, default runs/srm-sasrec/srm.pt) or, if there is none,
an untrained SASRec with the ML-100K shape (speed only; quality figures are then skipped).
LSC4REC_BENCH_QUALITY=0 skips the quality figures; LSC4REC_BENCH_REPEAT sets the timed calls (1000).
The variants take turns in 20 blocks (benchmarks.common.time_interleaved), so a busy minute on a shared
machine slows them all alike; each figure also has the thread-CPU p50 and the p50 of its fastest block.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.common import best_round_p50_us, emit, percentiles_us, time_interleaved

REPEAT = int(os.environ.get("LSC4REC_BENCH_REPEAT", "1000"))


def _model():
    import torch

    from device.training.artifacts import load_checkpoint
    from device.training.models import build_model

    path = Path(os.environ.get("LSC4REC_SRM_CKPT", "runs/srm-sasrec/srm.pt"))
    if path.is_file():
        model, ckpt = load_checkpoint(path)
        return model, ckpt["model"], ckpt["vocab_hash"], str(path)
    torch.manual_seed(0)
    return build_model("sasrec", {"num_items": 1682}).eval(), "sasrec", "untrained", "untrained"


def _quality(folders, model, vocab_hash):
    """Protocol A NDCG@10 of eager and every exported variant, if the ML-100K data is present."""
    from device.training.evaluate import evaluate, evaluate_artifact, model_score_fn
    from shared.data.dataset import load_dataset
    from shared.data.splits import loo_split

    data = Path(os.environ.get("LSC4REC_DATA", "data/ml-100k"))
    if vocab_hash == "untrained" or not (data / "meta.json").is_file():
        return
    dataset = load_dataset(data)
    test = loo_split(dataset).test
    eager = evaluate(model_score_fn(model), test, model.max_len, ks=(10,), rules=("removed",))
    emit("srm_quality", variant="torch-eager", protocol="A (loo, seen removed)", users=eager["users"],
         **{"ndcg@10": eager["ndcg@10"], "hr@10": eager["hr@10"]})
    for fmt, folder in folders.items():
        got = evaluate_artifact(folder, test, vocab_hash, ks=(10,), rules=("removed",))
        emit("srm_quality", variant=fmt, protocol="A (loo, seen removed)", users=got["users"],
             **{"ndcg@10": got["ndcg@10"], "hr@10": got["hr@10"],
                "ndcg@10_loss_vs_eager": 1 - got["ndcg@10"] / max(eager["ndcg@10"], 1e-12)})


def main() -> None:
    import torch

    from device.training import export as ex
    from device.training.artifacts import onnx_runner, pte_runner

    torch.set_num_threads(1)
    model, name, vocab_hash, source = _model()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {fmt: ex.export_one(model, name, vocab_hash, fmt, Path(tmp)) for fmt in ("onnx", "onnx-int8", "pte")}
        for fmt, folder in folders.items():
            file = next(p for p in folder.iterdir() if p.name.startswith("model."))
            emit("srm_file_size", variant=fmt, bytes=file.stat().st_size, model=name, source=source)
        # onnxruntime in the device's session (device.runtime.backend.ort_session)
        runners = {"torch-eager": None, "onnx-fp32": onnx_runner(folders["onnx"] / "model.onnx", threads=1),
                   "onnx-int8": onnx_runner(folders["onnx-int8"] / "model.onnx", threads=1),
                   "executorch-xnnpack": pte_runner(folders["pte"] / "model.pte")}
        for num in (50, 100):
            h, c = ex.example_inputs(model.num_items, model.max_len, batch=1, num_candidates=num, seed=1)
            hn, cn = h.numpy(), c.numpy()
            calls = {}
            for variant, run in runners.items():
                if run is None:
                    def call():
                        with torch.no_grad():
                            model(h, c)
                else:
                    def call(run=run):
                        run(hn, cn)
                calls[variant] = call
            p50 = {}
            for variant, samples in time_interleaved(calls, repeat=REPEAT).items():
                stats = percentiles_us(samples["wall"])
                p50[variant] = stats["p50_us"]
                emit("srm_rerank_latency", variant=variant, candidates=num, batch=1, threads=1, model=name,
                     cpu_p50_us=percentiles_us(samples["cpu"])["p50_us"], interleaved=True,
                     best_round_p50_us=best_round_p50_us(samples["wall"]), **stats)
            emit("srm_rerank_speedup", candidates=num, onnx_fp32_vs_eager=p50["torch-eager"] / p50["onnx-fp32"],
                 onnx_int8_vs_eager=p50["torch-eager"] / p50["onnx-int8"],
                 executorch_vs_eager=p50["torch-eager"] / p50["executorch-xnnpack"])
        if os.environ.get("LSC4REC_BENCH_QUALITY", "1") != "0":
            _quality(folders, model, vocab_hash)


if __name__ == "__main__":
    main()
