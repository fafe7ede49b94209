"""On-device SRM artifacts: verified loading and atomic model updates (no torch).

`load_reranker` verifies the artifact folder BEFORE any inference (manifest fields, vocab hash, file size and
sha256, the graph's input/output names, dtypes and shapes against the manifest), then builds the backend: the
onnxruntime one (device/runtime/backend.py; the default, torch-free), the native ExecuTorch runner
(device/runtime/native_backend.py, torch-free, once `make native` built it) or the optional ExecuTorch bindings
(device/executorch_backend.py, imported only when chosen: they exchange torch tensors). A "user-encoder" artifact
(catalogue-free) becomes a device.runtime.encoder.UserEncoder: OnnxUserEncoder for encoder.onnx,
NativeUserEncoder for encoder.pte. `ModelHolder` installs downloaded updates atomically.
"""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from device.runtime.backend import OnnxReranker, Reranker, check_manifest_shape
from device.runtime.encoder import OnnxUserEncoder, UserEncoder
from device.runtime.native_backend import NativeReranker, NativeUserEncoder
from device.runtime.native_backend import library_path as native_library_path
from shared.errors import CatalogMismatchError, ChecksumError, InvalidArgumentError, LSC4RecError, ManifestError
from shared.files import download_verified, staged_dir
from shared.manifest import MANIFEST_NAME, manifest_from_dict, manifest_to_dict, read_manifest, verify_artifact, write_manifest
from shared.records import ModelFormat, ModelManifest

def load_reranker(folder: str | Path, vocab_hash: str | None = None, backend: str = "auto",
                  threads: int = 1) -> Reranker:
    """Verify `folder` (manifest, vocab hash, size, sha256, graph I/O) and only then build the backend.

    backend: "auto" (by the manifest's format; a .pte runs natively when `make native` built the library, else
    through the torch-based bindings), "onnx", "executorch" (the bindings) or "native"; raises ManifestError or
    CatalogMismatchError and loads nothing when a check fails. A user-encoder .pte runs natively only.
    """
    manifest = read_manifest(folder)
    if vocab_hash is not None and manifest.vocab_hash != vocab_hash:
        raise CatalogMismatchError(f"{Path(folder) / MANIFEST_NAME}", vocab_hash, manifest.vocab_hash)
    wanted = {"auto": manifest.format, "onnx": ModelFormat.ONNX, "executorch": ModelFormat.PTE,
              "native": ModelFormat.PTE}.get(backend)
    if wanted is None:
        raise InvalidArgumentError("backend", backend, "must be auto, onnx, executorch or native")
    if wanted != manifest.format:
        raise ManifestError(f"{folder}: backend {backend} needs a {wanted.value} artifact, "
                            f"the manifest is {manifest.format.value}")
    if manifest.kind == "user-encoder":  # catalogue-free: item vectors in, user vector out (encoder.py)
        if manifest.format == ModelFormat.PTE and backend == "executorch":
            raise ManifestError(f"{folder}: a user-encoder .pte runs on the native backend (`make native`), not "
                                "the ExecuTorch bindings")
        manifest, path = verify_artifact(folder, manifest)
        if manifest.format == ModelFormat.ONNX:
            encoder: UserEncoder = OnnxUserEncoder(path, manifest, threads=threads)
        else:  # torch-free; load_library names `make native` when the library is not built
            encoder = NativeUserEncoder(folder, manifest, threads=threads)
        check_golden(encoder, path)
        return encoder
    check_manifest_shape(manifest)
    manifest, path = verify_artifact(folder, manifest)
    if manifest.format == ModelFormat.ONNX:
        reranker: Reranker = OnnxReranker(path, manifest, threads=threads)
    elif backend == "native" or (backend == "auto" and native_library_path() is not None):
        reranker = NativeReranker(folder, manifest, threads=threads)  # torch-free: `make native` built it
    else:
        from device.executorch_backend import ExecuTorchReranker  # torch: only where a .pte is loaded

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
        if isinstance(reranker, UserEncoder):  # the example carries its vectors: history items, then candidates
            real = int((hist > 0).sum())
            rows = np.asarray(golden.vectors, dtype=np.float32).reshape(-1, reranker.dim)
            if len(rows) != real + cand.shape[1]:
                raise ManifestError(f"{path}: the golden example has {len(rows)} vectors for {real} history items "
                                    f"and {cand.shape[1]} candidates")
            got = rows[real:] @ reranker.encode(rows[:real])[1]
        else:
            got = reranker.score(hist, cand)[0]
    except (LSC4RecError, ValueError) as exc:
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
                manifest, newer = client.latest_manifest(current.format, current.version, kind=current.kind)
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
        # Re-validate: the version becomes a folder name, and manifest_from_dict accepts only a plain name.
        manifest = manifest_from_dict(manifest_to_dict(manifest), source=f"manifest {manifest.version}")

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
