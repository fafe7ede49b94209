"""The native ExecuTorch backend: a `.pte` artifact run by liblsc4rec_native.so (device/native, `make native`)
through ctypes. Neither torch nor the executorch Python package is needed at run time: the library and the
ExecuTorch runtime libraries copied beside it are all it loads. `NativeReranker` runs a "scorer" artifact;
`NativeUserEncoder` a "user-encoder" one, each user's state (`NativeUserState`) kept by the library.

The library is found at $LSC4REC_NATIVE_LIB, else at build/native/liblsc4rec_native.so of this checkout (where
`make native` puts it). `library_path()` is None when neither exists; device/runtime/artifact.py then falls back to
the torch-based backend (device/executorch_backend.py). The library verifies the folder again on its own (manifest,
size, sha256, program against the manifest, golden example), as the C ABI promises every caller.

XNNPACK's graph compiler does not validate a delegate's payload: a .pte whose corrupt bytes were re-signed (a valid
sha256 over a broken program) can crash the process that loads it. So every folder is first opened by the
`lsc4rec-native check` command that `make native` builds beside the library, in a process of its own; a crash
there refuses the folder (ManifestError) and this process never compiles it. Where the command is missing (a
library placed by $LSC4REC_NATIVE_LIB alone), folders are opened in-process without that guard.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np

from device.runtime.backend import _Backend, check_manifest_shape
from device.runtime.encoder import UserEncoder
from shared.errors import InvalidArgumentError, LSC4RecError, ManifestError, UnavailableError
from shared.records import ModelManifest

LIBRARY_ENV = "LSC4REC_NATIVE_LIB"
BUILT_LIBRARY = Path(__file__).resolve().parents[2] / "build" / "native" / "liblsc4rec_native.so"
ABI_VERSION = 2  # LSC4REC_ABI_VERSION in device/native/include/lsc4rec_native.h

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
            _declare_encoder(lib)
            _library = lib
        return _library


def _declare_encoder(lib: ctypes.CDLL) -> None:
    """The user encoder's C signatures (a buffer is an address or a ctypes array)."""
    pointer, size = ctypes.c_void_p, ctypes.c_size_t
    lib.lsc4rec_encoder_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(pointer)]
    for name, restype in (("dim", size), ("history_length", size), ("has_partition", ctypes.c_int),
                          ("shape", ctypes.c_char_p), ("version", ctypes.c_char_p)):
        function = getattr(lib, f"lsc4rec_encoder_{name}")
        function.argtypes, function.restype = [pointer], restype
    lib.lsc4rec_user_state_new.argtypes = [pointer, ctypes.POINTER(pointer)]
    lib.lsc4rec_user_state_append.argtypes = [pointer, pointer, size, pointer, size, pointer]
    lib.lsc4rec_user_state_rebuild.argtypes = [pointer, pointer, size, size, pointer, size, pointer]
    for name in ("lsc4rec_encoder_close", "lsc4rec_user_state_free"):
        function = getattr(lib, name)
        function.argtypes, function.restype = [pointer], None


def check(lib: ctypes.CDLL, status: int) -> None:
    """Raise NativeCallError for a non-zero status, with this thread's last error."""
    if status != OK:
        raise NativeCallError(status, lib.lsc4rec_last_error().decode("utf-8", "replace"))


PROBE_TIMEOUT_S = 60.0


def probe(folder: str | Path, manifest: ModelManifest) -> None:
    """Open `folder` in a process of its own first (`lsc4rec-native check`, module docstring); ManifestError when
    that process dies of a signal or hangs. Any other refusal is left to the in-process open, which types it."""
    library = library_path()
    command = None if library is None else library.parent / "lsc4rec-native"
    if command is None or not command.is_file():
        return
    try:
        done = subprocess.run([str(command), "check", "--model", str(folder), "--kind", manifest.kind or "scorer"],
                              capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ManifestError(f"{folder}: opening the program took over {PROBE_TIMEOUT_S:.0f} s in a probe process; "
                            "the artifact is refused") from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        raise ManifestError(f"{folder}: the native runtime crashed ({name}) compiling the program in a probe "
                            "process; the artifact is corrupt and refused")


def _open(lib: ctypes.CDLL, function, folder: str | Path, manifest: ModelManifest, threads: int) -> ctypes.c_void_p:
    """A handle from lsc4rec_scorer_open / lsc4rec_encoder_open after `probe`; a refused folder raises ManifestError
    (a runtime failure UnavailableError) with the library's message."""
    probe(folder, manifest)
    handle = ctypes.c_void_p()
    # load_reranker compared the vocab hash with the device's already; the library checks the rest again.
    status = function(str(folder).encode(), manifest.vocab_hash.encode(), 1 if threads == 1 else 0,
                      ctypes.byref(handle))
    try:
        check(lib, status)
    except NativeCallError as exc:
        if exc.status == E_RUNTIME:
            raise UnavailableError(f"{folder}: {exc.message}") from None
        raise ManifestError(exc.message) from None
    return handle


class NativeReranker(_Backend):
    """A `.pte` run by the native library: (B, T) histories are scored one row at a time (the program's batch
    is 1, like the phone's one user). Input checks happen in Python first (`_Backend.score`), and again in C."""

    runtime_name = "ExecuTorch (native)"

    def __init__(self, folder: str | Path, manifest: ModelManifest, threads: int = 1):
        check_manifest_shape(manifest)
        self._lib = load_library()
        handle = self._handle = _open(self._lib, self._lib.lsc4rec_scorer_open, folder, manifest, threads)
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


class NativeUserEncoder(UserEncoder):
    """A user-encoder `.pte` run by the native library, which keeps each user's state (`new_state()`); the same
    semantics as encoder.py's OnnxUserEncoder (the library implements the three shapes)."""

    runtime_name = "ExecuTorch (native)"

    def __init__(self, folder: str | Path, manifest: ModelManifest, threads: int = 1):
        super().__init__(Path(folder) / manifest.file_name, manifest)
        self._lib = load_library()
        handle = self._handle = _open(self._lib, self._lib.lsc4rec_encoder_open, folder, manifest, threads)
        lib = self._lib
        read = (int(lib.lsc4rec_encoder_dim(handle)), int(lib.lsc4rec_encoder_history_length(handle)),
                bool(lib.lsc4rec_encoder_has_partition(handle)), lib.lsc4rec_encoder_shape(handle).decode())
        if read != (self.dim, self.history_length, self.has_partition, self.shape):
            self.close()
            raise ManifestError(f"{folder}: the library reads (dim, history_length, has_partition, shape) = {read}, "
                                f"Python {(self.dim, self.history_length, self.has_partition, self.shape)}")

    def new_state(self) -> "NativeUserState":
        return NativeUserState(self)

    def close(self) -> None:
        """Release the native encoder (also done when the object is collected); states keep it until freed."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.lsc4rec_encoder_close(handle)

    def __del__(self) -> None:
        self.close()


class NativeUserState:
    """One user's state in the native library: `append(vector)` per event, `rebuild(vectors)`; `user` (d,) float32
    or None before the first item, `partition` [log Z, log T] (float64) or None. A call the library refuses raises
    LSC4RecError with its message and leaves the state as it was."""

    def __init__(self, encoder: NativeUserEncoder):
        self.encoder, self._lib = encoder, encoder._lib
        handle = ctypes.c_void_p()
        self._fail(self._lib.lsc4rec_user_state_new(encoder._handle, ctypes.byref(handle)))
        self._handle = handle
        self.user: np.ndarray | None = None
        self.partition: np.ndarray | None = None
        # The per-event call passes ctypes buffers made once (numpy's .ctypes.data costs about 1 µs per array).
        dim = encoder.dim
        self._vector, self._user = (ctypes.c_float * dim)(), (ctypes.c_float * dim)()
        self._log_partition = (ctypes.c_float * 2)() if encoder.has_partition else None
        self._views = [np.frombuffer(b, dtype=np.float32) if b is not None else None
                       for b in (self._vector, self._user, self._log_partition)]

    def _fail(self, status: int) -> None:
        if status != OK:
            message = self._lib.lsc4rec_last_error().decode("utf-8", "replace")
            raise LSC4RecError(f"user encoder {self.encoder.manifest.version}: {message}")

    def _keep(self) -> np.ndarray:
        _, user, partition = self._views
        self.user, self.partition = user.copy(), None if partition is None else partition.astype(np.float64)
        return self.user

    def append(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape == (self.encoder.dim,):
            np.copyto(self._views[0], vector)
            data, size = self._vector, self.encoder.dim
        else:  # the library names what is wrong with it
            vector = np.ascontiguousarray(vector)
            data, size = vector.ctypes.data, vector.size
        self._fail(self._lib.lsc4rec_user_state_append(self._handle, data, size, self._user, self.encoder.dim,
                                                       self._log_partition))
        return self._keep()

    def rebuild(self, vectors: np.ndarray) -> np.ndarray | None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise LSC4RecError(f"user encoder {self.encoder.manifest.version}: vectors of shape {vectors.shape}, "
                               f"expected (n, {self.encoder.dim})")
        self._fail(self._lib.lsc4rec_user_state_rebuild(self._handle, vectors.ctypes.data, vectors.shape[0],
                                                        vectors.shape[1], self._user, self.encoder.dim,
                                                        self._log_partition))
        if not len(vectors):  # a new user's state again
            self.user = self.partition = None
            return None
        return self._keep()

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.lsc4rec_user_state_free(handle)
