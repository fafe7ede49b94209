"""Export: parity eager vs ONNX vs ExecuTorch, dynamic axes, manifests, and no partial artifacts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from device.training import export as ex
from device.training.artifacts import onnx_runner, pte_runner
from device.training.models import build_model
from shared.manifest import verify_artifact

N, T = 30, 10


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("sasrec", {"num_items": N, "max_len": T, "hidden": 32}).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    folders = {fmt: ex.export_one(model, "sasrec", "vocab123", fmt, out, {"valid_ndcg@10": 0.5})
               for fmt in ("onnx", "onnx-int8", "pte")}
    return out, folders


def _inputs(b, c, seed=7):
    h, cands = ex.example_inputs(N, T, b, c, seed)
    return h, cands


def test_one_folder_per_format_with_verified_manifest(exported):
    out, folders = exported
    assert sorted(p.name for p in out.iterdir()) == ["onnx", "onnx-int8", "pte"]  # nothing else left
    for fmt, folder in folders.items():
        manifest, path = verify_artifact(folder)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", manifest.file_name])
        assert [s.name for s in manifest.inputs] == ["history", "candidates"]
        batch = 1 if fmt == "pte" else "batch"  # ExecuTorch programs take one user at a time
        assert manifest.inputs[0].shape == (batch, T) and manifest.inputs[1].shape == (batch, "num_candidates")
        assert manifest.outputs[0].name == "scores" and manifest.outputs[0].dtype == "float32"
        assert (manifest.history_length, manifest.num_items, manifest.vocab_hash) == (T, N, "vocab123")
        assert manifest.metrics["valid_ndcg@10"] == 0.5
        assert manifest.metrics["parity_max_abs_diff"] <= manifest.metrics["parity_tolerance"]
        assert manifest.version.endswith(manifest.sha256[:8])


@pytest.mark.parametrize("b, c", [(1, 50), (7, 13), (2, 1)])
def test_parity_eager_onnx_pte_on_dynamic_shapes(model, exported, b, c):
    _, folders = exported
    h, cands = _inputs(b, c)
    with torch.no_grad():
        eager = model(h, cands).numpy()
    onnx_out = onnx_runner(folders["onnx"] / "model.onnx")(h.numpy(), cands.numpy())
    pte = pte_runner(folders["pte"] / "model.pte")
    pte_out = np.concatenate([pte(h[i:i + 1].numpy(), cands[i:i + 1].numpy()) for i in range(b)])
    assert np.abs(onnx_out - eager).max() <= ex.PARITY_ATOL
    assert np.abs(pte_out - eager).max() <= ex.PARITY_ATOL
    int8 = onnx_runner(folders["onnx-int8"] / "model.onnx")(h.numpy(), cands.numpy())
    assert int8.shape == eager.shape and np.abs(int8 - eager).max() <= ex.INT8_RTOL * np.abs(eager).max() + 1e-6


def test_onnx_graph_rewrites(model, exported):
    """fp32: attention runs on the (B, S, d) states (no head reshapes); int8: every Linear is quantised."""
    import onnx

    _, folders = exported
    fp32 = onnx.load(folders["onnx"] / "model.onnx").graph.node
    attention = [n for n in fp32 if n.op_type == "Attention"]
    assert len(attention) == model.config.layers and not [n for n in fp32 if n.op_type == "Transpose"]
    for node in attention:
        heads = {a.name: a.i for a in node.attribute if a.name.endswith("num_heads")}
        assert heads == {"q_num_heads": model.config.heads, "kv_num_heads": model.config.heads}
    linears = 4 * model.config.layers
    assert sum(n.op_type == "Gemm" for n in fp32) == linears
    int8 = onnx.load(folders["onnx-int8"] / "model.onnx").graph.node
    assert not [n for n in int8 if n.op_type == "Gemm"]
    assert sum(n.op_type == "MatMulInteger" for n in int8) == linears


def test_history_bias_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    biased = build_model("sasrec", {"num_items": N, "max_len": T, "hidden": 32, "history_bias": True}).eval()
    with torch.no_grad():
        biased.history_bias.raw.copy_(-torch.arange(T) / 10.0)
    h, cands = _inputs(3, 40)  # 40 candidates among 30 items: most rows repeat history items
    with torch.no_grad():
        eager = biased(h, cands).numpy()
    for fmt, run in (("onnx", onnx_runner), ("pte", pte_runner)):
        folder = ex.export_one(biased, "sasrec", "v", fmt, tmp_path)
        path = folder / ("model.onnx" if fmt == "onnx" else "model.pte")
        rows = [run(path)(h[i:i + 1].numpy(), cands[i:i + 1].numpy()) for i in range(3)]
        assert np.abs(np.concatenate(rows) - eager).max() <= ex.PARITY_ATOL


def test_failed_parity_leaves_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "PARITY_ATOL", -1.0)
    with pytest.raises(ex.ExportError, match="tolerance"):
        ex.export_one(model, "sasrec", "v", "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_and_keeps_the_old_artifact(model, tmp_path, monkeypatch, exported):
    _, folders = exported
    import shutil
    shutil.copytree(folders["onnx"], tmp_path / "onnx")
    before = (tmp_path / "onnx" / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(ex, "write_manifest", broken)
    with pytest.raises(ex.ExportError, match="disk full"):
        ex.export_one(model, "sasrec", "v", "onnx", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    assert (tmp_path / "onnx" / "manifest.json").read_text() == before


def test_artifact_evaluation_matches_eager(model, exported, tiny_dataset):
    from device.training.evaluate import evaluate, evaluate_artifact, model_score_fn
    from shared.data.splits import Examples
    from shared.errors import CatalogMismatchError

    _, folders = exported
    rng = np.random.default_rng(0)
    examples = Examples(np.arange(8), tuple(rng.integers(1, N + 1, size=12) for _ in range(8)),
                        rng.integers(1, N + 1, size=8))
    eager = evaluate(model_score_fn(model), examples, T)
    for fmt in ("onnx", "pte"):
        got = evaluate_artifact(folders[fmt], examples, "vocab123")
        for key in ("hr@10", "ndcg@10", "seen_kept/ndcg@10", "mrr@50"):
            assert got[key] == pytest.approx(eager[key], abs=1e-9), (fmt, key)
    with pytest.raises(CatalogMismatchError):
        evaluate_artifact(folders["onnx"], examples, "another-catalogue")


def test_offline_scores_are_the_device_runtimes(exported):
    """`eval srm --artifact` (and export's parity and golden check) run an ONNX file in the session a device
    runs it in (device.runtime.backend.ort_session): the same graph optimisations, the same scores."""
    from device.runtime.artifact import load_reranker
    from device.training.artifacts import artifact_score_fn

    _, folders = exported
    manifest, path = verify_artifact(folders["onnx"])
    history, _ = _inputs(4, 1)
    offline = artifact_score_fn(manifest, path)(history.numpy())
    device = load_reranker(folders["onnx"], "vocab123").score(history.numpy(), np.tile(np.arange(1, N + 1), (4, 1)))
    assert np.isneginf(offline[:, 0]).all() and np.array_equal(offline[:, 1:], device)


def _program_calls(path) -> tuple[int, set[str]]:
    """(delegate calls, operators run outside a delegate) of an ExecuTorch program."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    calls = [i.instr_args for chain in plan.chains for i in chain.instructions]
    kernels = {plan.operators[c.op_index].name for c in calls if type(c).__name__ == "KernelCall"}
    return sum(type(c).__name__ == "DelegateCall" for c in calls), kernels


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_pte_is_one_xnnpack_call_between_the_lookups(name, exported, tmp_path):
    """The model's ExecuTorch form (SequentialRecommender.for_executorch) lowers whole to XNNPACK: only the item
    lookups, the padding test and the output's squeeze run outside it (at the reference shape, lowering `forward`
    itself gave 13 delegate calls and 70 operators outside them for SASRec, 53 and 165 for GRU4Rec)."""
    if name == "sasrec":
        folder = exported[1]["pte"]
    else:
        torch.manual_seed(0)
        model = build_model(name, {"num_items": N, "max_len": T, "hidden": 32}).eval()
        folder = ex.export_one(model, name, "v", "pte", tmp_path)  # parity with eager checked there
    delegates, outside = _program_calls(folder / "model.pte")
    assert delegates == 1
    assert outside <= {"aten::embedding", "aten::gt", "dim_order_ops::_to_dim_order_copy", "aten::squeeze_copy",
                       "aten::full", "aten::slice_copy"}
