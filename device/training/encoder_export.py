"""Export an SRM as a catalogue-free device model: a user encoder (ONNX or ExecuTorch) plus the item table the cloud
keeps.

Folder `user-encoder/` (ONNX, onnxruntime on the device) or `user-encoder-pte/` (ExecuTorch lowered to XNNPACK,
the native runner device/native): `encoder.onnx` / `encoder.pte` (device/runtime/encoder.py says what its three
shapes compute), `item_vectors.npz` (the item table, int8 + one scale per item: shared.vector_table; it stays in the
cloud, which sends rows with lists) and `manifest.json` (kind "user-encoder", vector_dim, the table's sha256, and a
golden example that carries its own vectors so a device can check the graph with no table). Both formats come from
the same wrapper and are checked the same way: the exported graph, run step by step as a device runs it
(encoder.GraphEncoder), against eager PyTorch on the same (dequantised) vectors; the manifest's metrics also say
what quantisation and, for a recurrent model, incremental encoding change against the model's own full-catalogue
scorer.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from device.runtime.encoder import PARTITION_OUTPUT, GraphEncoder, OnnxUserEncoder
from device.training.artifacts import load_checkpoint
from device.training.export import (PARITY_ATOL, AttentionOnHiddenStates, ExportError, _rewrite_onnx, check_parity,
                                     example_inputs, lower_pte, staged_folder)
from device.training.partition_head import PartitionHead, fit_partition_head
from shared.manifest import new_version, sha256_file, write_manifest
from shared.records import GoldenExample, ModelFormat, ModelManifest, TensorSpec
from shared.vector_table import VECTOR_TABLE_NAME, VectorTable, dequantise

FORMAT, PTE_FORMAT = "user-encoder", "user-encoder-pte"  # the export formats (folder names): ONNX, ExecuTorch
FORMATS = (FORMAT, PTE_FORMAT)
FILE_NAMES = {FORMAT: "encoder.onnx", PTE_FORMAT: "encoder.pte"}
KIND = "user-encoder"  # the manifest kind of both
GOLDEN_HISTORY, GOLDEN_CANDIDATES = 12, 16


class _Graph(nn.Module):
    """The model's user encoder, plus the partition head's [log Z, log T] of the user vector when there is one."""

    def __init__(self, model, head: PartitionHead | None):
        super().__init__()
        self.model, self.head = model.eval(), None if head is None else head.eval()

    def _with_head(self, *outputs, user: torch.Tensor):
        return outputs if self.head is None else (*outputs, self.head(user))


class _Window(_Graph):
    def forward(self, history_vectors: torch.Tensor):
        user = self.model.user_from_vectors(history_vectors)
        return self._with_head(user, user=user)


class _Step(_Graph):
    def forward(self, state: torch.Tensor, item_vector: torch.Tensor):
        user, nxt = self.model.step(item_vector, state)
        return self._with_head(nxt, user, user=user)


class _Cached(_Graph):
    def forward(self, item_vector, position, past_keys, past_values, past_mask):
        user, keys, values = self.model.step(item_vector, position, past_keys, past_values, past_mask)
        return self._with_head(user, keys, values, user=user)


def _graph(model, head: PartitionHead | None = None,
           executorch: bool = False) -> tuple[nn.Module, tuple, tuple, tuple]:
    """The wrapper to export, its example inputs and the manifest's input/output specs; `executorch`: a rotary
    SASRec's step in the model's for_executorch() form (operators XNNPACK delegates, the same values)."""
    wrapper, inputs, in_specs, out_specs = _shape(model, head, executorch)
    if head is not None:
        out_specs = (*out_specs, TensorSpec(PARTITION_OUTPUT, "float32", (1, 2)))
    return wrapper, inputs, in_specs, out_specs


def encoder_shape(model) -> str | None:
    """Which graph a model's user encoder exports as (device/runtime/encoder.py): "recurrent" (a model with its own
    state, GRU4Rec), "cached" (rotary SASRec: keys and values kept per block), "window", or None (no user vector)."""
    if hasattr(model, "initial_state"):
        return "recurrent"
    if not hasattr(model, "user_from_vectors"):
        return None
    return "cached" if getattr(model.config, "positions", None) == "rotary" else "window"


def _shape(model, head, executorch: bool):
    d = model.item_table().shape[1]
    shape = encoder_shape(model)
    if shape == "recurrent":
        state = model.initial_state(1)
        return (_Step(model, head), (state, torch.zeros(1, d)),
                (TensorSpec("state", "float32", tuple(state.shape)), TensorSpec("item_vector", "float32", (1, d))),
                (TensorSpec("next_state", "float32", tuple(state.shape)), TensorSpec("user", "float32", (1, d))))
    if shape == "cached":
        c = model.config
        cache = (c.layers, c.heads, c.max_len - 1, c.hidden // c.heads)
        inputs = (torch.zeros(1, d), torch.zeros(1, dtype=torch.int64), torch.zeros(cache), torch.zeros(cache),
                  torch.zeros(c.max_len - 1, dtype=torch.bool))
        new = (c.layers, c.heads, 1, c.hidden // c.heads)
        return (_Cached(model.for_executorch() if executorch else model, head), inputs,
                (TensorSpec("item_vector", "float32", (1, d)), TensorSpec("position", "int64", (1,)),
                 TensorSpec("past_keys", "float32", cache), TensorSpec("past_values", "float32", cache),
                 TensorSpec("past_mask", "bool", (c.max_len - 1,))),
                (TensorSpec("user", "float32", (1, d)), TensorSpec("keys", "float32", new),
                 TensorSpec("values", "float32", new)))
    if shape == "window":
        return (_Window(model, head), (torch.zeros(1, model.max_len, d),),
                (TensorSpec("history_vectors", "float32", (1, model.max_len, d)),),
                (TensorSpec("user", "float32", (1, d)),))
    raise ExportError(f"{type(model).__name__} has no user encoder: the catalogue-free export needs a model whose "
                      "score is a user vector . item vector (sasrec, gru4rec)")


def has_user_encoder(model) -> bool:
    """The model scores by user vector . item vector with one item table (what a catalogue-free device needs)."""
    return encoder_shape(model) is not None and getattr(model, "out_emb", None) is None


def export_encoder_checkpoint(ckpt_path: str | Path, out_dir: str | Path, seed: int = 0, dataset=None,
                              formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Path]:
    """`export_user_encoder` of a checkpoint in each of `formats`; the manifests carry the checkpoint's validation
    metrics. With the `dataset` it was trained on, the graphs also get a partition head (fitted once, on its training
    histories). Returns {format: folder}."""
    model, ckpt = load_checkpoint(ckpt_path, None if dataset is None else dataset.vocab_hash)
    metrics = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, (int, float))}
    head = None
    if dataset is not None:
        head, figures = fit_partition_head(model, dataset.sequences(), seed=seed)
        metrics.update(figures)
    return {fmt: export_user_encoder(model, ckpt["model"], ckpt["vocab_hash"], Path(out_dir), metrics,
                                     untrained=ckpt.get("untrained_items", ()), seed=seed, head=head, fmt=fmt)
            for fmt in formats}


def _eager_user(model, vectors: np.ndarray) -> np.ndarray:
    """The user vector eager PyTorch computes from a history's vectors (n, d), as the exported graph does."""
    with torch.no_grad():
        x = torch.from_numpy(vectors[-model.max_len:])
        if encoder_shape(model) == "recurrent":  # after a window of padding, as the device starts (encoder.py)
            state, user = model.initial_state(1), None
            for _ in range(model.max_len):
                state = model.step(torch.zeros(1, x.shape[1]), state)[1]
            for row in x:
                user, state = model.step(row[None, :], state)
            return user[0].numpy()
        window = torch.zeros(1, model.max_len, x.shape[1])
        window[0, model.max_len - len(x):] = x
        return model.user_from_vectors(window)[0].numpy()


class _PteEncoder(GraphEncoder):
    """An encoder.pte run step by step through ExecuTorch's Python bindings (torch tensors in and out): the export's
    check of the program, with the shapes' logic every device uses (devices run it natively, device/native)."""

    runtime_name = "ExecuTorch"

    def __init__(self, path: Path, manifest: ModelManifest):
        super().__init__(path, manifest)
        from executorch.runtime import Runtime  # optional and heavy: only this format imports it

        self._method = Runtime.get().load_program(path).load_method("forward")
        self._names = [spec.name for spec in manifest.inputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self._method.execute([torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self._names])
        return [out.numpy() for out in outputs]


def _write_onnx(wrapper: nn.Module, inputs: tuple, in_specs, out_specs, path: Path) -> None:
    program = torch.onnx.export(wrapper, inputs, dynamo=True, input_names=[s.name for s in in_specs],
                                output_names=[s.name for s in out_specs], external_data=False, verbose=False,
                                opset_version=23)
    _rewrite_onnx(program.model, AttentionOnHiddenStates)
    program.save(str(path))


def export_user_encoder(model, model_name: str, vocab_hash: str, out_dir: Path, metrics: dict | None = None,
                        untrained=(), seed: int = 0, head: PartitionHead | None = None, fmt: str = FORMAT) -> Path:
    """Write `out_dir/<fmt>/` (FORMAT: ONNX, PTE_FORMAT: ExecuTorch) atomically, checked against eager first;
    returns the folder. With `head`, the graph also outputs its [log Z, log T] (the "est-regret" measure's input)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown user-encoder format {fmt!r} (known: {', '.join(FORMATS)})")
    wrapper, inputs, in_specs, out_specs = _graph(model, head, executorch=fmt != FORMAT)
    try:
        float_table = model.item_table().detach().float().numpy()
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    file_name = FILE_NAMES[fmt]
    with staged_folder(out_dir, fmt) as tmp:
        path = tmp / file_name
        if fmt == FORMAT:
            _write_onnx(wrapper, inputs, in_specs, out_specs, path)
        else:
            lower_pte(torch.export.export(wrapper, inputs), path)  # every shape fixed
        table = VectorTable.from_floats(float_table, vocab_hash)
        table_sha = table.save(tmp / VECTOR_TABLE_NAME)
        vectors = dequantise(table.values, table.scales)  # what devices receive
        sha = sha256_file(path)
        manifest = ModelManifest(
            model_name=model_name, version=new_version(sha),
            format=ModelFormat.ONNX if fmt == FORMAT else ModelFormat.PTE, file_name=file_name, sha256=sha,
            size_bytes=path.stat().st_size, inputs=in_specs, outputs=out_specs, history_length=model.max_len,
            num_items=model.num_items, vocab_hash=vocab_hash, created_at=datetime.now(timezone.utc).isoformat(),
            metrics=dict(metrics or {}), untrained_items=tuple(int(i) for i in untrained), kind=KIND,
            vector_dim=vectors.shape[1], vector_table_sha256=table_sha)
        encoder = OnnxUserEncoder(path, manifest) if fmt == FORMAT else _PteEncoder(path, manifest)
        figures, golden = _check(encoder, model, head, vectors, fmt, seed)
        figures["table_bytes"] = int(table.values.nbytes + table.scales.nbytes)
        manifest = ModelManifest(**{**manifest.__dict__, "metrics": {**manifest.metrics, **figures},
                                    "golden": golden})
        write_manifest(manifest, tmp)
    return out_dir / fmt


def _check(encoder: GraphEncoder, model, head: PartitionHead | None, vectors: np.ndarray, fmt: str,
           seed: int) -> tuple[dict, GoldenExample]:
    """The exported graph against eager PyTorch (ExportError beyond PARITY_ATOL), and the golden example of the
    graph's own outputs: (metrics figures, golden)."""
    histories, candidates = example_inputs(model.num_items, model.max_len, batch=3, seed=seed)
    diffs, quant, incremental = [], [], []
    for history, cands in zip(histories.numpy(), candidates.numpy()):
        real = history[history > 0]
        expected = _eager_user(model, vectors[real])
        _, user, partition = encoder.encode(vectors[real])
        diffs.append(check_parity(f"{fmt} user vector", user, expected, PARITY_ATOL))
        if head is not None:
            with torch.no_grad():
                eager = head(torch.from_numpy(expected)[None])[0].numpy()
            diffs.append(check_parity(f"{fmt} {PARTITION_OUTPUT}", partition, eager, PARITY_ATOL))
        with torch.no_grad():  # the model's own scorer: float table, full window
            own = model(torch.from_numpy(history[None, :]), torch.from_numpy(cands[None, :]))[0].numpy()
        fresh = ~np.isin(cands, real)  # a device never scores a consumed item (the history bias's only use)
        mine = vectors[cands[fresh]] @ user
        scale = max(float(np.abs(own[fresh]).max()), 1e-6)
        (incremental if encoder.recurrent else quant).append(float(np.abs(mine - own[fresh]).max()) / scale)
    rng = np.random.default_rng(seed)
    g_hist = rng.integers(1, model.num_items + 1, GOLDEN_HISTORY)[-model.max_len:]  # what the window holds
    g_cands = rng.integers(1, model.num_items + 1, GOLDEN_CANDIDATES)
    g_user = encoder.encode(vectors[g_hist])[1]
    padded = np.zeros(model.max_len, dtype=np.int64)
    padded[-len(g_hist):] = g_hist
    golden = GoldenExample(tuple(int(i) for i in padded), tuple(int(i) for i in g_cands),
                           tuple(float(s) for s in vectors[g_cands] @ g_user),
                           tuple(float(v) for v in np.concatenate([vectors[g_hist], vectors[g_cands]]).ravel()))
    figures = {"parity_max_abs_diff": max(diffs), "parity_tolerance": PARITY_ATOL}
    if quant:  # how far the device's scores (int8 vectors) are from the model's own, relative to their range
        figures["int8_max_rel_score_diff"] = max(quant)
    if incremental:  # a recurrent model: also no left padding read, and no window (see encoder.py)
        figures["incremental_max_rel_score_diff"] = max(incremental)
    return figures, golden
