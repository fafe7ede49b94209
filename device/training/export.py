"""Export an SRM checkpoint to ONNX (fp32, int8) and ExecuTorch/XNNPACK, each folder with a manifest.

Every format comes from the one wrapper below around the one model definition: ONNX from the model's
`forward`, ExecuTorch from its `for_executorch()` form (the same scores in operators XNNPACK delegates).
A folder is written to a temporary sibling first, checked for parity against eager PyTorch (`forward`),
given its manifest, and only then renamed into place: a failed parity check or a failed write leaves no
partial artifact.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx_ir as ir
import torch
from onnxscript.rewriter import common_passes, pattern
from torch import nn

from device.training.artifacts import load_checkpoint, onnx_runner, pte_runner
from shared.errors import LSC4RecError
from shared.files import replace_dir
from shared.manifest import new_version, sha256_file, write_manifest
from shared.records import GoldenExample, ModelFormat, ModelManifest, TensorSpec

PARITY_ATOL = 1e-4  # eager vs ONNX fp32 vs ExecuTorch, absolute, on the example inputs
INT8_RTOL = 0.05  # int8 is checked against eager relative to the score range (it is lossy by design)
FORMATS = ("onnx", "onnx-int8", "pte")
# Opset 23 has a fused Attention op: SASRec's scaled_dot_product_attention becomes one node (about 10%
# faster per call than opset 20's spelled-out attention, measured with onnxruntime 1.32 on one thread).
ONNX_OPSET = 23


class ExportError(LSC4RecError):
    """An export failed (parity beyond tolerance, exporter error); nothing was left behind."""


class ScoringWrapper(nn.Module):
    """The exported graph: (history (B, T) int64, candidates (B, C) int64) -> scores (B, C) float32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()  # dropout off in every exported graph

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.model(history, candidates).to(torch.float32)


@dataclass(frozen=True)
class ExportConfig:
    # ExecuTorch plans memory for the upper bound of the candidate axis (recorded in the manifest's
    # metrics); onnxruntime has no bounds (batch_max only bounds the traced ONNX graph's batch axis).
    batch_max: int = 1024
    candidates_max: int = 2048
    seed: int = 0


def default_config(model) -> ExportConfig:
    """The model's own ExecuTorch bound on the candidate axis (SequentialRecommender.export_candidates_max)."""
    return ExportConfig(candidates_max=model.export_candidates_max)


def example_inputs(num_items: int, max_len: int, batch: int = 3, num_candidates: int = 50,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous example inputs with some left padding (one row fully padded but the last slot)."""
    gen = torch.Generator().manual_seed(seed)
    history = torch.randint(1, num_items + 1, (batch, max_len), generator=gen)
    history[0, : max_len // 2] = 0
    history[-1, :-1] = 0
    candidates = torch.randint(1, num_items + 1, (batch, num_candidates), generator=gen)
    return history.contiguous(), candidates.contiguous()


def _specs(max_len: int, fmt: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    batch = 1 if fmt == "pte" else "batch"  # see _dynamic_shapes
    inputs = (TensorSpec("history", "int64", (batch, max_len)),
              TensorSpec("candidates", "int64", (batch, "num_candidates")))
    return inputs, (TensorSpec("scores", "float32", (batch, "num_candidates")),)


def _dynamic_shapes(config: ExportConfig, fmt: str):
    """ONNX: dynamic batch and candidates. ExecuTorch 1.5.1: the batch is fixed at 1 (one user per
    device), because a dynamic batch left portable-kernel outputs (e.g. `history > 0`) static-shaped
    and the program failed at run time on any other batch; the candidate axis is dynamic."""
    cands = torch.export.Dim("num_candidates", min=1, max=config.candidates_max)
    if fmt == "pte":
        return {"history": {}, "candidates": {1: cands}}
    batch = torch.export.Dim("batch", min=1, max=config.batch_max)
    return {"history": {0: batch}, "candidates": {0: batch, 1: cands}}


class AttentionOnHiddenStates(pattern.RewriteRuleClassBase):
    """Reshape + Transpose into heads -> Attention -> Transpose + Reshape back, as exported from
    `scaled_dot_product_attention`, becomes one Attention on the (B, S, d) states with `q_num_heads` /
    `kv_num_heads` (opset 23's 3-D form). The same arithmetic with 14 fewer nodes for a 2-block SASRec:
    about 8% less time per call with onnxruntime 1.32 on one thread here. The output keeps the shape the
    graph asked for ((B, S, d) or (B S, d) rows)."""

    def pattern(self, op, q, k, v, mask, q_shape, k_shape, v_shape, out_shape):
        def heads(x, shape):  # (B, S, d) -> (B, H, S, d/H)
            return op.Transpose(op.Reshape(x, shape), perm=[0, 2, 1, 3])

        y = op.Attention(heads(q, q_shape), heads(k, k_shape), heads(v, v_shape), mask, _outputs=["y"])
        return op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), out_shape)

    def check(self, context, q, k, v, q_shape, k_shape, v_shape, out_shape, **_):
        result = pattern.MatchResult()
        shapes = [ir.convenience.get_const_tensor(s) for s in (q_shape, k_shape, v_shape, out_shape)]
        if any(s is None for s in shapes) or any(x.shape is None for x in (q, k, v)):
            return result.fail("the head shapes or the input ranks are unknown")
        splits = [s.numpy().tolist() for s in shapes[:3]]
        if any(x.shape.rank() != 3 for x in (q, k, v)) or any(len(s) != 4 for s in splits):
            return result.fail("not a (B, S, d) -> (B, S, H, d/H) split")
        if len({s[2] for s in splits}) != 1:
            return result.fail("the inputs are split into different head counts")
        self._heads = int(splits[0][2])
        self._merged = shapes[3].numpy().size == 3  # the graph wants (B, S, d) back, which Attention gives
        return result

    def rewrite(self, op, q, k, v, mask, y, out_shape, **_):
        attributes = dict(y.producer().attributes)  # scale, is_causal, softcap, ... as exported
        y = op.Attention(q, k, v, mask, q_num_heads=self._heads, kv_num_heads=self._heads, **attributes)
        return y if self._merged else op.Reshape(y, out_shape)


class GemmAsMatMulAdd(pattern.RewriteRuleClassBase):
    """Gemm(a, W, b) with constant W -> MatMul(a, W') + Add(b): onnxruntime's dynamic int8 quantisation
    handles MatMul but not Gemm, and SASRec's Linear layers export as Gemm (see its `encode`)."""

    def pattern(self, op, a, w, b):
        return op.Gemm(a, w, b, _outputs=["y"])

    def check(self, context, w, y, **_):
        result = pattern.MatchResult()
        attributes = y.producer().attributes
        if (ir.convenience.get_const_tensor(w) is None or attributes.get_int("transA", 0)
                or attributes.get_float("alpha", 1.0) != 1.0 or attributes.get_float("beta", 1.0) != 1.0):
            return result.fail("not a plain Gemm with constant weights")
        return result

    def rewrite(self, op, a, w, b, y, **_):
        weights = ir.convenience.get_const_tensor(w).numpy()
        if y.producer().attributes.get_int("transB", 0):
            weights = weights.T
        weights = op.initializer(ir.tensor(np.ascontiguousarray(weights)), name=f"{w.name}_matmul")
        return op.Add(op.MatMul(a, weights), b)


def _rewrite_onnx(model: ir.Model, *rules: type[pattern.RewriteRuleClassBase]) -> None:
    pattern.RewriteRuleSet([rule.rule() for rule in rules]).apply_to_model(model)
    common_passes.RemoveUnusedNodesPass()(model)


def write_onnx(wrapper: ScoringWrapper, inputs, path: Path, config: ExportConfig) -> None:
    """Dynamo exporter at ONNX_OPSET: dynamic batch and candidate axes, fixed history length; attention
    rewritten onto the hidden states (AttentionOnHiddenStates)."""
    program = torch.onnx.export(wrapper, inputs, dynamo=True, input_names=["history", "candidates"],
                                output_names=["scores"], dynamic_shapes=_dynamic_shapes(config, "onnx"),
                                external_data=False, verbose=False, opset_version=ONNX_OPSET)
    _rewrite_onnx(program.model, AttentionOnHiddenStates)
    program.save(str(path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations stay float) with onnxruntime. `src` (export_one's
    temporary fp32 file) is first rewritten in place so that every Linear is a MatMul (GemmAsMatMulAdd)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = ir.load(src)
    _rewrite_onnx(model, GemmAsMatMulAdd)
    ir.save(model, src)
    # Only matrix products and embedding lookups: onnxruntime 1.32 maps the standard (opset 23) Attention
    # node to its contrib QAttention, which rejects that node's attributes.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"])


def write_pte(wrapper: ScoringWrapper, inputs, path: Path, config: ExportConfig) -> None:
    """torch.export (the scorer's inputs, its dynamic candidate axis) -> `lower_pte`. `wrapper` holds the model's
    `for_executorch()` form: each operator XNNPACK does not take runs outside it and splits the delegate."""
    lower_pte(torch.export.export(wrapper, inputs, dynamic_shapes=_dynamic_shapes(config, "pte")), path)


def lower_pte(exported, path: Path) -> None:
    """A torch.export program -> edge dialect lowered to XNNPACK -> the ExecuTorch program at `path`."""
    # executorch is optional and heavy: only the .pte formats import it
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    # Plan memory for the declared upper bounds of dynamic axes, not the example's sizes (the default would fix them).
    backend = ExecutorchBackendConfig(sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass())
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch(backend)
    path.write_bytes(program.buffer)


def check_parity(name: str, got: np.ndarray, expected: np.ndarray, atol: float) -> float:
    """Max |got - expected|; raises ExportError beyond `atol` (shapes must match)."""
    if got.shape != expected.shape:
        raise ExportError(f"{name}: output shape {got.shape}, eager gives {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(f"{name}: max |exported - eager| = {diff:.3g} exceeds the tolerance {atol:.3g}")
    return diff


def _parity_inputs(model, config: ExportConfig, fmt: str):
    """Several shapes, so dynamic axes are exercised beyond the traced example."""
    shapes = ((1, 50), (1, 100), (1, 7)) if fmt == "pte" else ((1, 50), (3, 100), (5, 7))
    return [example_inputs(model.num_items, model.max_len, min(b, config.batch_max), min(c, config.candidates_max),
                           config.seed + i) for i, (b, c) in enumerate(shapes)]


def _build(fmt: str, wrapper, model, folder: Path, config: ExportConfig) -> tuple[str, dict, GoldenExample]:
    """Write the file for one format into `folder` and check it; returns (file name, parity figures, golden)."""
    inputs = example_inputs(model.num_items, model.max_len, batch=1 if fmt == "pte" else 3, seed=config.seed)
    checks = _parity_inputs(model, config, fmt)
    with torch.no_grad():
        expected = [wrapper(h, c).numpy() for h, c in checks]
    if fmt == "pte":
        file_name = "model.pte"
        write_pte(ScoringWrapper(model.for_executorch()), inputs, folder / file_name, config)
        run, tol = pte_runner(folder / file_name), PARITY_ATOL
    else:
        file_name = "model.onnx"
        write_onnx(wrapper, inputs, folder / file_name, config)
        if fmt == "onnx-int8":
            fp32 = folder / "fp32.onnx"
            (folder / file_name).replace(fp32)
            quantize_int8(fp32, folder / file_name)
            fp32.unlink()
        run = onnx_runner(folder / file_name)
        scale = max(float(np.abs(e).max()) for e in expected)
        tol = PARITY_ATOL if fmt == "onnx" else INT8_RTOL * max(scale, 1e-6)
    diffs = [check_parity(f"{fmt} {h.shape[0]}x{c.shape[1]}", run(h.numpy(), c.numpy()), e, tol)
             for (h, c), e in zip(checks, expected)]
    # The artifact's own scores for one history against every item (so a changed weight of any item shows):
    # devices re-check them at load (device.runtime.check_golden).
    history = np.ascontiguousarray(checks[0][0][:1].numpy())
    candidates = np.arange(1, min(model.num_items, config.candidates_max) + 1, dtype=np.int64)[None, :]
    golden = GoldenExample(tuple(int(i) for i in history[0]), tuple(int(i) for i in candidates[0]),
                           tuple(float(s) for s in run(history, candidates)[0]))
    return file_name, {"parity_max_abs_diff": max(diffs), "parity_tolerance": tol}, golden


def export_one(model, model_name: str, vocab_hash: str, fmt: str, out_dir: Path,
               metrics: dict | None = None, config: ExportConfig | None = None, untrained=()) -> Path:
    """Write `out_dir/<fmt>/` (file + manifest.json) atomically; returns that folder. `untrained`: the item ids no
    training sequence held (the manifest's untrained_items)."""
    config = config or default_config(model)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    with staged_folder(out_dir, fmt) as tmp:
        wrapper = ScoringWrapper(model)
        file_name, parity, golden = _build(fmt, wrapper, model, tmp, config)
        bounds = {"max_batch": 1, "max_candidates": config.candidates_max} if fmt == "pte" else {}
        path = tmp / file_name
        sha = sha256_file(path)
        inputs, outputs = _specs(model.max_len, fmt)
        manifest = ModelManifest(
            model_name=model_name + ("-int8" if fmt == "onnx-int8" else ""), version=new_version(sha),
            format=ModelFormat.PTE if fmt == "pte" else ModelFormat.ONNX, file_name=file_name, sha256=sha,
            size_bytes=path.stat().st_size, inputs=inputs, outputs=outputs, history_length=model.max_len,
            num_items=model.num_items, vocab_hash=vocab_hash,
            created_at=datetime.now(timezone.utc).isoformat(), metrics={**(metrics or {}), **parity, **bounds},
            golden=golden, untrained_items=tuple(int(i) for i in untrained))
        write_manifest(manifest, tmp)
    return out_dir / fmt


@contextmanager
def staged_folder(out_dir: Path, fmt: str) -> Iterator[Path]:
    """A temp sibling of `out_dir/fmt` to write an export into, renamed into place when the block ends cleanly. On any
    failure nothing is left, and an error other than ExportError becomes one ExportError naming the format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}.tmp-", dir=out_dir))
    try:
        yield tmp
        tmp.chmod(0o755)
        replace_dir(tmp, out_dir / fmt)
    except ExportError:
        raise
    except Exception as exc:  # exporter/runtime failures become one typed error; nothing is left
        raise ExportError(f"export to {fmt} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_checkpoint(ckpt_path: str | Path, formats: tuple[str, ...], out_dir: str | Path,
                      config: ExportConfig | None = None) -> dict[str, Path]:
    """Export a checkpoint to each format; the manifest carries the checkpoint's validation metrics."""
    model, ckpt = load_checkpoint(ckpt_path)
    metrics = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, (int, float))}
    return {fmt: export_one(model, ckpt["model"], ckpt["vocab_hash"], fmt, Path(out_dir), metrics, config,
                            untrained=ckpt.get("untrained_items", ())) for fmt in formats}
