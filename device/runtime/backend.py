"""The Reranker interface and its backends' common checks, plus the onnxruntime backend (torch-free).

A `Reranker` scores candidate items for histories: `score(histories (B, T) int64, candidates (B, C) int64) ->
(B, C) float32` logits, T = `history_length` (left-padded with 0). `ort_session` is the one place an onnxruntime
session is built (devices, export checks and offline evaluation all measure the same graph). The ExecuTorch
backend is in executorch_backend.py; device/runtime/artifact.py verifies a folder and picks the backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from shared.errors import InvalidArgumentError, ManifestError, UnavailableError
from shared.records import ModelManifest, TensorSpec
from shared.sequences import check_ids

_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
               "tensor(double)": "float64", "tensor(float16)": "float16"}


class Reranker(Protocol):
    """What the session needs from a model."""

    manifest: ModelManifest

    @property
    def history_length(self) -> int: ...

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray: ...

    # Optional: `score_trusted(histories, candidates)`, the same without input checks (see _Backend); the
    # session uses it when present for inputs it built and validated itself.


def check_inputs(histories: np.ndarray, candidates: np.ndarray, history_length: int,
                 num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and ids (history: 0 or 1..N; candidates: 1..N) and return contiguous int64 arrays."""
    hist = np.ascontiguousarray(histories, dtype=np.int64)
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    if hist.ndim != 2 or hist.shape[1] != history_length:
        raise InvalidArgumentError("histories", hist.shape, f"must be (B, {history_length}) int64")
    if cand.ndim != 2 or cand.shape[0] != hist.shape[0] or cand.shape[1] < 1:
        raise InvalidArgumentError("candidates", cand.shape, f"must be ({hist.shape[0]}, C >= 1) int64")
    check_ids("histories", hist, num_items, allow_padding=True)
    check_ids("candidates", cand, num_items, allow_padding=False)
    return hist, cand


def _check_spec(where: str, declared: TensorSpec, name: str, dtype: str, shape: Iterable) -> None:
    """The graph's tensor must have the manifest's name, dtype, rank, and every fixed dimension."""
    shape = tuple(shape)
    if name != declared.name:
        raise ManifestError(f"{where}: graph tensor '{name}' but the manifest declares '{declared.name}'")
    if dtype != declared.dtype:
        raise ManifestError(f"{where} '{name}': graph dtype {dtype}, manifest says {declared.dtype}")
    if len(shape) != len(declared.shape):
        raise ManifestError(f"{where} '{name}': graph rank {len(shape)}, manifest shape {list(declared.shape)}")
    for axis, (got, want) in enumerate(zip(shape, declared.shape)):
        if isinstance(want, int) and isinstance(got, int) and got != want:
            raise ManifestError(f"{where} '{name}' axis {axis}: graph size {got}, manifest says {want}")
        if isinstance(want, int) and not isinstance(got, int):
            raise ManifestError(f"{where} '{name}' axis {axis}: graph is dynamic, manifest fixes it to {want}")


def check_manifest_shape(manifest: ModelManifest) -> None:
    """Two int64 inputs (history (B, T), candidates (B, C)) and a float32 output; T = history_length."""
    if len(manifest.inputs) != 2 or len(manifest.outputs) < 1:
        raise ManifestError(f"manifest {manifest.version}: expected 2 inputs (history, candidates) and 1 output, "
                            f"got {len(manifest.inputs)} and {len(manifest.outputs)}")
    history, candidates = manifest.inputs
    if len(history.shape) != 2 or history.shape[1] != manifest.history_length:
        raise ManifestError(f"manifest {manifest.version}: history input shape {list(history.shape)} does not end "
                            f"in history_length {manifest.history_length}")
    if len(candidates.shape) != 2 or any(s.dtype != "int64" for s in manifest.inputs):
        raise ManifestError(f"manifest {manifest.version}: inputs must be 2-D int64, got "
                            f"{[(s.name, s.dtype, list(s.shape)) for s in manifest.inputs]}")
    if manifest.outputs[0].dtype != "float32":
        raise ManifestError(f"manifest {manifest.version}: output dtype {manifest.outputs[0].dtype}, expected float32")


class _Backend:
    """What every backend shares: input checks before inference, one error type when the runtime fails."""

    manifest: ModelManifest
    runtime_name = "runtime"

    @property
    def history_length(self) -> int:
        return self.manifest.history_length

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(B, C) float32 logits; raises UnknownItemError / InvalidArgumentError before inference."""
        hist, cand = check_inputs(histories, candidates, self.history_length, self.manifest.num_items)
        return self.score_trusted(hist, cand)

    def score_trusted(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """`score` without the input checks, for callers that built the inputs themselves (the session's
        per-event path): C-contiguous int64 (B, T) histories with ids in 0..N, (B, C >= 1) candidates in 1..N."""
        try:
            out = self._run(hist, cand)
        except Exception as exc:  # the runtime's own error types become the project's (the session falls back)
            raise UnavailableError(f"SRM {self.manifest.version}: {self.runtime_name} failed ({exc})") from None
        out = out.astype(np.float32, copy=False).reshape(cand.shape)
        finite = np.isfinite(out)
        if not finite.all():  # e.g. a re-signed model whose broken weight the golden input does not reach
            raise UnavailableError(f"SRM {self.manifest.version}: {self.runtime_name} gave non-finite scores for "
                                   f"{int(finite.size - finite.sum())} of {finite.size} candidates")
        return out

    def _run(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def ort_session(path: str | Path, threads: int = 1):
    """The onnxruntime session every ONNX artifact runs in, on a device and offline alike (export's parity and
    golden scores, `eval srm --artifact`), so that all of them measure the same optimised graph: CPU, sequential
    execution, `threads` intra-op threads. Raises onnxruntime's own errors for a file it cannot load."""
    import onnxruntime as ort  # the ExecuTorch backend does without it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Basic graph rewrites only: the extended fusions (Gemm with reshapes, SkipLayerNorm, Gelu) made this
    # small model about 10% slower per call here (onnxruntime 1.32, one thread; benchmarks/bench_srm.py).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxReranker(_Backend):
    """onnxruntime backend (CPU, sequential execution, `threads` intra-op threads)."""

    runtime_name = "onnxruntime"

    def __init__(self, path: str | Path, manifest: ModelManifest, threads: int = 1):
        check_manifest_shape(manifest)
        try:
            self._session = ort_session(path, threads)
        except ImportError:
            raise  # no onnxruntime installed: a broken install, not a broken model
        except Exception as exc:  # onnxruntime raises its own untyped errors for a broken graph
            raise ManifestError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        self.manifest = manifest
        try:
            graph = [(arg.name, _ORT_DTYPES.get(arg.type, arg.type), arg.shape)
                     for arg in (*self._session.get_inputs(), *self._session.get_outputs()[:1])]
        except Exception as exc:  # e.g. UnicodeDecodeError for a dimension name that is not UTF-8
            raise ManifestError(f"{path}: onnxruntime cannot describe the graph ({exc!r})") from None
        if len(graph) != 3:
            raise ManifestError(f"{path}: graph has {len(graph) - 1} inputs, manifest declares 2")
        for spec, (name, dtype, shape), what in zip((*manifest.inputs, manifest.outputs[0]), graph,
                                                    ("input", "input", "output")):
            _check_spec(f"{path}: {what}", spec, name, dtype, shape)
        self._names = [s.name for s in manifest.inputs]
        self._output = [manifest.outputs[0].name]
        self._warm_up(path)

    def _warm_up(self, path) -> None:
        """One call at load time (the first run allocates), which also proves the graph runs and has the declared output."""
        hist = np.zeros((1, self.history_length), dtype=np.int64)
        cand = np.ones((1, 2), dtype=np.int64)
        try:
            out = self._session.run(self._output, {self._names[0]: hist, self._names[1]: cand})[0]
        except Exception as exc:  # onnxruntime's own error types
            raise ManifestError(f"{path}: the model fails on a (1, {self.history_length}) x (1, 2) input ({exc})") from None
        if np.shape(out) != (1, 2):
            raise ManifestError(f"{path}: output shape {np.shape(out)} for 2 candidates, expected (1, 2)")

    def _run(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(self._output, {self._names[0]: hist, self._names[1]: cand})[0])
