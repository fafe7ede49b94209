"""On-device SRM runtime: verified loading of ONNX / ExecuTorch artifacts and atomic model updates (no torch).

A `Reranker` scores candidate items for histories: `score(histories (B, T) int64, candidates (B, C)
int64) -> (B, C) float32` logits, T = `history_length` (left-padded with 0). `load_reranker`
verifies the artifact folder BEFORE any inference: manifest fields, vocab hash, file size and
sha256, and the graph's input/output names, dtypes and shapes against the manifest.

Backends: onnxruntime (default; one intra-op thread, the right choice for a model this small) and
ExecuTorch (`executorch.runtime`, imported only when chosen). Note: executorch's Python bindings
exchange torch tensors and load torch themselves, so only the ONNX backend is torch-free; the
ExecuTorch backend is for parity checks and for C++ deployments that use the same `.pte`.
"""
from __future__ import annotations

import importlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from shared.errors import (CatalogMismatchError, ChecksumError, InvalidArgumentError, LSC4RecError, ManifestError,
                           UnavailableError)
from shared.files import download_verified, staged_dir
from shared.manifest import MANIFEST_NAME, manifest_from_dict, manifest_to_dict, read_manifest, verify_artifact, write_manifest
from shared.records import ModelFormat, ModelManifest, TensorSpec
from shared.sequences import check_ids

_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
               "tensor(double)": "float64", "tensor(float16)": "float16"}
_ET_DTYPES = {3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}  # c10::ScalarType codes


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


class ExecuTorchReranker(_Backend):
    """ExecuTorch backend (`executorch.runtime`, lazily imported; its bindings bring torch with them)."""

    runtime_name = "ExecuTorch"

    def __init__(self, path: str | Path, manifest: ModelManifest):
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise ManifestError(f"{path}: the ExecuTorch backend needs `pip install lsc4rec[executorch]` ({exc})") from None
        check_manifest_shape(manifest)
        # executorch's pybindings take and return torch tensors (no numpy path in executorch 1.5)
        self._torch = importlib.import_module("torch")
        try:
            program = Runtime.get().load_program(Path(path))
            self._method = program.load_method("forward")
        except Exception as exc:  # the runtime raises untyped errors for a broken program
            raise ManifestError(f"{path}: ExecuTorch cannot load the program ({exc})") from None
        meta = self._method.metadata
        if meta.num_inputs() != 2:
            raise ManifestError(f"{path}: program has {meta.num_inputs()} inputs, manifest declares 2")
        for i, spec in enumerate(manifest.inputs):
            info = meta.input_tensor_meta(i)
            self._check_planned(path, spec, _ET_DTYPES.get(info.dtype(), str(info.dtype())), info.sizes())
        out = meta.output_tensor_meta(0)
        self._check_planned(path, manifest.outputs[0], _ET_DTYPES.get(out.dtype(), str(out.dtype())), out.sizes())
        self.manifest = manifest

    @staticmethod
    def _check_planned(path, spec: TensorSpec, dtype: str, sizes) -> None:
        # .pte programs have no tensor names and report the upper bound of dynamic dims
        shape = [s if isinstance(w, int) else w for s, w in zip(sizes, spec.shape)]
        _check_spec(f"{path}: tensor", spec, spec.name, dtype, shape if len(sizes) == len(spec.shape) else sizes)

    def _run(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return self._method.execute([self._torch.from_numpy(hist), self._torch.from_numpy(cand)])[0].detach().numpy()


def load_reranker(folder: str | Path, vocab_hash: str | None = None, backend: str = "auto",
                  threads: int = 1) -> Reranker:
    """Verify `folder` (manifest, vocab hash, size, sha256, graph I/O) and only then build the backend.

    backend: "auto" (by the manifest's format), "onnx" or "executorch"; raises ManifestError or
    CatalogMismatchError and loads nothing when a check fails.
    """
    manifest = read_manifest(folder)
    if vocab_hash is not None and manifest.vocab_hash != vocab_hash:
        raise CatalogMismatchError(f"{Path(folder) / MANIFEST_NAME}", vocab_hash, manifest.vocab_hash)
    wanted = {"auto": manifest.format, "onnx": ModelFormat.ONNX, "executorch": ModelFormat.PTE}.get(backend)
    if wanted is None:
        raise InvalidArgumentError("backend", backend, "must be auto, onnx or executorch")
    if wanted != manifest.format:
        raise ManifestError(f"{folder}: backend {backend} needs a {wanted.value} artifact, "
                            f"the manifest is {manifest.format.value}")
    check_manifest_shape(manifest)
    manifest, path = verify_artifact(folder, manifest)
    if manifest.format == ModelFormat.ONNX:
        reranker: Reranker = OnnxReranker(path, manifest, threads=threads)
    else:
        reranker = ExecuTorchReranker(path, manifest)
    check_golden(reranker, path)
    return reranker


GOLDEN_TOLERANCE = 1e-4  # absolute, on logits: the golden scores are the artifact's own, so only kernels differ


def check_golden(reranker: Reranker, path: Path) -> None:
    """The manifest's golden example must score as recorded: catches a re-signed artifact with other weights."""
    golden = reranker.manifest.golden
    if golden is None:
        return
    hist = np.asarray([golden.history], dtype=np.int64)
    cand = np.asarray([golden.candidates], dtype=np.int64)
    try:
        got = reranker.score(hist, cand)[0]
    except LSC4RecError as exc:
        raise ManifestError(f"{path}: the golden example cannot be scored ({exc})") from None
    gap = float(np.max(np.abs(got - np.asarray(golden.scores, dtype=np.float32))))
    if not gap <= GOLDEN_TOLERANCE:
        raise ManifestError(f"{path}: scores differ from the manifest's golden example by {gap:.3g} "
                            f"(tolerance {GOLDEN_TOLERANCE}); the artifact is not the one that was exported")


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of one update check: "current" (nothing newer), "updated", or "rejected" (kept the old model)."""

    status: str
    version: str
    reason: str = ""


class ModelHolder:
    """Holds the current reranker, acts as one (delegates score), and swaps in verified updates atomically.

    `latest_manifest(current_version) -> ModelManifest | None` (None = nothing newer) and
    `download(manifest) -> Iterable[bytes]` come from the cloud client. A new version is written to
    `root/<version>/`, verified by `load_reranker` (sha256, size, graph, vocab hash), and only then
    swapped in; a download that fails verification is deleted and the current model stays.
    """

    def __init__(self, reranker: Reranker, root: str | Path, backend: str = "auto", threads: int = 1):
        self._current = reranker
        self._root = Path(root)
        self._backend, self._threads = backend, threads
        self._lock = threading.Lock()

    @property
    def current(self) -> Reranker:
        return self._current

    @property
    def manifest(self) -> ModelManifest:
        return self._current.manifest

    @property
    def history_length(self) -> int:
        return self._current.history_length

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self._current.score(histories, candidates)

    def score_trusted(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The current model's `score_trusted` (its `score` when it has none)."""
        current = self._current
        return getattr(current, "score_trusted", current.score)(histories, candidates)

    def check_for_update(self, latest_manifest: Callable[[str], ModelManifest | None],
                         download: Callable[[ModelManifest], Iterable[bytes]]) -> UpdateResult:
        """Fetch, verify and swap; errors of the fetch or the verification give "rejected" (current model kept)."""
        with self._lock:
            current = self._current.manifest
            try:
                manifest = latest_manifest(current.version)
            except LSC4RecError as exc:
                return UpdateResult("rejected", current.version, f"manifest fetch failed: {exc}")
            if manifest is None or manifest.version == current.version:
                return UpdateResult("current", current.version)
            try:
                reranker = self._install(manifest, download, current.vocab_hash)
            except LSC4RecError as exc:
                return UpdateResult("rejected", current.version, str(exc))
            self._current = reranker  # one reference assignment: sessions see the old or the new model
            return UpdateResult("updated", manifest.version)

    def update_from_cloud(self, client, download_root: str | Path | None = None) -> UpdateResult:
        """Same as check_for_update through a device.runtime.client.CloudClient (`latest_manifest`, `download`).

        The client writes a verified folder; it is loaded with `load_reranker` (graph, vocab hash)
        before the swap, and deleted when it fails.
        """
        with self._lock:
            current = self._current.manifest
            try:
                manifest, newer = client.latest_manifest(current.format, current.version)
                if not newer or manifest.version == current.version:
                    return UpdateResult("current", current.version)
                folder = Path(client.download(manifest, download_root or self._root))
            except LSC4RecError as exc:
                return UpdateResult("rejected", current.version, f"fetch failed: {exc}")
            try:
                reranker = load_reranker(folder, vocab_hash=current.vocab_hash, backend=self._backend,
                                         threads=self._threads)
            except LSC4RecError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                return UpdateResult("rejected", current.version, str(exc))
            self._current = reranker
            return UpdateResult("updated", manifest.version)

    def _install(self, manifest: ModelManifest, download, vocab_hash: str) -> Reranker:
        manifest = manifest_from_dict(manifest_to_dict(manifest), source=f"manifest {manifest.version}")
        if not manifest.version or "/" in manifest.version or manifest.version.startswith("."):
            raise ManifestError(f"manifest version {manifest.version!r} is not a plain folder name")
        def write(out) -> None:
            for chunk in download(manifest):
                out.write(chunk)

        # The loaded model holds the file (inode) it verified; the rename to the final name keeps it valid.
        with staged_dir(self._root / manifest.version, replace=True) as staging:
            try:
                download_verified(staging / manifest.file_name, manifest.sha256, write)
            except ChecksumError as exc:  # a download that is not the manifest's artifact
                raise ManifestError(f"{exc.path}: sha256 {exc.actual} does not match the manifest's "
                                    f"{exc.expected}") from None
            write_manifest(manifest, staging)
            return load_reranker(staging, vocab_hash=vocab_hash, backend=self._backend, threads=self._threads)
