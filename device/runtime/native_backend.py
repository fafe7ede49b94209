"""The native ExecuTorch backend: a `.pte` artifact run by liblsc4rec_native.so (device/native, `make native`)
through ctypes. Neither torch nor the executorch Python package is needed at run time: the library and the
ExecuTorch runtime libraries copied beside it are all it loads.

The library is found at $LSC4REC_NATIVE_LIB, else at build/native/liblsc4rec_native.so of this checkout (where
`make native` puts it). `library_path()` is None when neither exists; device/runtime/artifact.py then falls back to
the torch-based backend (device/executorch_backend.py). The library verifies the folder again on its own (manifest,
size, sha256, program against the manifest, golden example), as the C ABI promises every caller.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from device.runtime.backend import _Backend, check_manifest_shape
from shared.errors import InvalidArgumentError, ManifestError, UnavailableError
from shared.records import ModelManifest

LIBRARY_ENV = "LSC4REC_NATIVE_LIB"
BUILT_LIBRARY = Path(__file__).resolve().parents[2] / "build" / "native" / "liblsc4rec_native.so"
ABI_VERSION = 1  # LSC4REC_ABI_VERSION in device/native/include/lsc4rec_native.h

# lsc4rec_status codes (include/lsc4rec_native.h)
OK, E_ARGUMENT, E_UNKNOWN_ITEM, E_MANIFEST, E_CATALOG, E_RUNTIME = range(6)
STATUS_NAMES = {OK: "ok", E_ARGUMENT: "argument", E_UNKNOWN_ITEM: "unknown item", E_MANIFEST: "manifest",
                E_CATALOG: "catalogue", E_RUNTIME: "runtime"}

_I64P = ctypes.POINTER(ctypes.c_int64)
_F32P = ctypes.POINTER(ctypes.c_float)
_lock = threading.Lock()
_library: ctypes.CDLL | None = None


class NativeCallError(Exception):
    """A non-zero lsc4rec_status with the library's one-line message (mapped to the project's errors below)."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(f"{STATUS_NAMES.get(status, status)}: {message}")


def library_path() -> Path | None:
    """$LSC4REC_NATIVE_LIB if set (it must exist), else the checkout's build/native library if built, else None."""
    configured = os.environ.get(LIBRARY_ENV)
    if configured:
        if not Path(configured).is_file():
            raise ManifestError(f"{LIBRARY_ENV}={configured}: no such file")
        return Path(configured)
    return BUILT_LIBRARY if BUILT_LIBRARY.is_file() else None


def load_library() -> ctypes.CDLL:
    """The native library with its C signatures declared (loaded once per process)."""
    global _library
    with _lock:
        if _library is None:
            path = library_path()
            if path is None:
                raise ManifestError(f"the native ExecuTorch runner is not built ({BUILT_LIBRARY} is missing): "
                                    f"run `make native`, or set {LIBRARY_ENV}")
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise ManifestError(f"{path}: cannot be loaded ({exc})") from None
            lib.lsc4rec_abi_version.restype = ctypes.c_int
            if lib.lsc4rec_abi_version() != ABI_VERSION:
                raise ManifestError(f"{path}: C ABI version {lib.lsc4rec_abi_version()}, this module speaks "
                                    f"{ABI_VERSION}; rebuild it with `make native`")
            lib.lsc4rec_last_error.restype = ctypes.c_char_p
            lib.lsc4rec_scorer_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                                ctypes.POINTER(ctypes.c_void_p)]
            lib.lsc4rec_scorer_score.argtypes = [ctypes.c_void_p, _I64P, ctypes.c_size_t, _I64P, ctypes.c_size_t,
                                                 _F32P, ctypes.c_size_t]
            for name, restype in (("history_length", ctypes.c_size_t), ("num_items", ctypes.c_int64),
                                  ("max_candidates", ctypes.c_size_t), ("version", ctypes.c_char_p)):
                function = getattr(lib, f"lsc4rec_scorer_{name}")
                function.argtypes, function.restype = [ctypes.c_void_p], restype
            lib.lsc4rec_scorer_close.argtypes = [ctypes.c_void_p]
            lib.lsc4rec_scorer_close.restype = None
            _library = lib
        return _library


def check(lib: ctypes.CDLL, status: int) -> None:
    """Raise NativeCallError for a non-zero status, with this thread's last error."""
    if status != OK:
        raise NativeCallError(status, lib.lsc4rec_last_error().decode("utf-8", "replace"))


class NativeReranker(_Backend):
    """A `.pte` run by the native library: (B, T) histories are scored one row at a time (the program's batch
    is 1, like the phone's one user). Input checks happen in Python first (`_Backend.score`), and again in C."""

    runtime_name = "ExecuTorch (native)"

    def __init__(self, folder: str | Path, manifest: ModelManifest, threads: int = 1):
        check_manifest_shape(manifest)
        self._lib = load_library()
        handle = ctypes.c_void_p()
        # load_reranker compared the vocab hash with the device's already; the library checks the rest again.
        status = self._lib.lsc4rec_scorer_open(str(folder).encode(), manifest.vocab_hash.encode(),
                                               1 if threads == 1 else 0, ctypes.byref(handle))
        try:
            check(self._lib, status)
        except NativeCallError as exc:
            if exc.status == E_RUNTIME:
                raise UnavailableError(f"{folder}: {exc.message}") from None
            raise ManifestError(exc.message) from None
        self._handle = handle
        self.manifest = manifest
        self.max_candidates = int(self._lib.lsc4rec_scorer_max_candidates(handle))
        if self._lib.lsc4rec_scorer_history_length(handle) != manifest.history_length:
            self.close()
            raise ManifestError(f"{folder}: the library reads history_length "
                                f"{self._lib.lsc4rec_scorer_history_length(handle)}, Python {manifest.history_length}")

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """`_Backend.score`, plus the program's planned bound on the candidate axis (an argument error)."""
        width = np.shape(candidates)[-1] if np.ndim(candidates) == 2 else 0
        if width > self.max_candidates:
            raise InvalidArgumentError("candidates", np.shape(candidates),
                                       f"the program takes at most {self.max_candidates} per row")
        return super().score(histories, candidates)

    def _run(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        out = np.empty(cand.shape, dtype=np.float32)
        for row in range(hist.shape[0]):
            h, c, o = hist[row], cand[row], out[row]
            status = self._lib.lsc4rec_scorer_score(self._handle, h.ctypes.data_as(_I64P), h.size,
                                                    c.ctypes.data_as(_I64P), c.size, o.ctypes.data_as(_F32P), o.size)
            check(self._lib, status)  # ids and sizes were checked before: what remains is a runtime failure
        return out

    def close(self) -> None:
        """Free the native scorer (also done when the object is collected)."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.lsc4rec_scorer_close(handle)

    def __del__(self) -> None:
        self.close()
