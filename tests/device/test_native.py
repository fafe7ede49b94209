"""The native ExecuTorch runner (device/native): parity with eager torch for SASRec and GRU4Rec, the C ABI and the
CLI on bad input, and the torch-free ctypes backend (device/runtime/native_backend.py) behind load_reranker.

The runner is built once per session into build/native (what `make native` runs). Where a build tool is missing the
tests skip and name it; where the tools exist and the build fails, they fail.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from device.runtime import native_backend as nb
from shared.manifest import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "native"
CONFIG = {"num_items": 30, "max_len": 8}
SIZES = {"sasrec": {"hidden": 16, "heads": 2, "inner": 32, "layers": 1}, "gru4rec": {"hidden": 16, "gru_hidden": 16}}
CANDIDATES_MAX = 64
PARITY_ATOL = 1e-5
# Debian packages that provide what a failed configure names (device/native/CMakeLists.txt's find_package calls).
PACKAGES = {"nlohmann_json": "nlohmann-json3-dev", "OpenSSL": "libssl-dev"}


def _missing_tools() -> list[str]:
    missing = [] if shutil.which("cmake") else ["cmake (Debian: cmake)"]
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++17 compiler (Debian: g++)")
    if importlib.util.find_spec("executorch") is None:
        missing.append("the executorch==1.5.1 wheel (its runtime libraries and headers)")
    return missing


@pytest.fixture(scope="session")
def native_lib() -> Path:
    """build/native/liblsc4rec_native.so, configured and built (incrementally) once per session."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the native runner cannot be built here: missing {', '.join(missing)}")
    if not any((BUILD / f).is_file() for f in ("build.ninja", "Makefile")):
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        proc = subprocess.run(["cmake", "-S", str(ROOT / "device" / "native"), "-B", str(BUILD), *generator,
                               f"-DLSC4REC_PYTHON={sys.executable}"], capture_output=True, text=True)
        if proc.returncode != 0:
            absent = [f"{pkg} (Debian: {deb})" for pkg, deb in PACKAGES.items() if f"find_package({pkg}" in
                      proc.stderr or f"Could NOT find {pkg}" in proc.stderr or f"package named \"{pkg}\"" in
                      proc.stderr]
            if absent:
                pytest.skip(f"the native runner cannot be built here: missing {', '.join(absent)}")
            pytest.fail(f"cmake configure failed:\n{proc.stderr[-3000:]}")
    proc = subprocess.run(["cmake", "--build", str(BUILD)], capture_output=True, text=True)
    assert proc.returncode == 0, f"the native build failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
    return BUILD / "liblsc4rec_native.so"


def _export(name: str, folder: Path):
    """A tiny seeded model of `name` and its .pte folder (device.training.export, the production path)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch.exir")
    from device.training.export import ExportConfig, export_one
    from device.training.models import build_model

    torch.manual_seed(0)
    model = build_model(name, {**CONFIG, **SIZES[name]}).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = export_one(model, name, f"vocab-{name}", "pte", folder, config=ExportConfig(candidates_max=CANDIDATES_MAX))
    return model, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """{"sasrec": (eager model, pte folder), "gru4rec": (...)}."""
    return {name: _export(name, tmp_path_factory.mktemp(name)) for name in ("sasrec", "gru4rec")}


def _inputs(batch=3, cands=50, seed=0):
    """The inputs of tests/device/test_runtime.py's parity test (ids 0..N in histories, 1..N in candidates)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, CONFIG["num_items"] + 1, (batch, CONFIG["max_len"])),
            rng.integers(1, CONFIG["num_items"] + 1, (batch, cands)))


def _eager(model, hist, cand) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(hist, dtype=np.int64)),
                     torch.from_numpy(np.asarray(cand, dtype=np.int64))).numpy()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BUILD / "lsc4rec-native"), *args], capture_output=True, text=True, timeout=60)


def _ids(values) -> str:
    return ",".join(str(int(v)) for v in values)


# ------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_native_scores_equal_eager_torch(native_lib, exported, name):
    from device.runtime.artifact import load_reranker

    model, folder = exported[name]
    reranker = load_reranker(folder, vocab_hash=f"vocab-{name}")
    assert isinstance(reranker, nb.NativeReranker)
    for batch, cands, seed in ((3, 50, 0), (1, 7, 1), (2, CANDIDATES_MAX, 2)):
        hist, cand = _inputs(batch, cands, seed)
        got = reranker.score(hist, cand)
        assert got.dtype == np.float32 and got.shape == (batch, cands)
        np.testing.assert_allclose(got, _eager(model, hist, cand), atol=PARITY_ATOL, rtol=0)
    hist, cand = _inputs(1, 50)  # the CLI prints the same scores
    proc = _cli("score", "--model", str(folder), "--history", _ids(hist[0]), "--candidates", _ids(cand[0]))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    np.testing.assert_allclose(out["scores"], _eager(model, hist, cand)[0], atol=PARITY_ATOL, rtol=0)
    assert out["history_length"] == CONFIG["max_len"] and out["max_candidates"] == CANDIDATES_MAX


def test_a_short_history_is_left_padded(native_lib, exported):
    model, folder = exported["sasrec"]
    lib = nb.load_library()
    scorer = _open(lib, folder)
    try:
        hist, cand = [5, 9, 2], np.arange(1, 11, dtype=np.int64)
        got = _score(lib, scorer, hist, cand)
        padded = np.zeros((1, CONFIG["max_len"]), dtype=np.int64)
        padded[0, -3:] = hist
        np.testing.assert_allclose(got, _eager(model, padded, cand[None])[0], atol=PARITY_ATOL, rtol=0)
    finally:
        lib.lsc4rec_scorer_close(scorer)


def test_bench_reports_latency_and_memory(native_lib, exported):
    proc = _cli("bench", "--model", str(exported["sasrec"][1]), "--calls", "200", "--candidates", "50")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["calls"] == 200 and 0 < out["p50_us"] <= out["p99_us"] and 0 < out["peak_rss_mb"] < 200


# ---------------------------------------------------------------------------------------------- the C ABI, raw


def _open(lib, folder, vocab_hash=None):
    handle = ctypes.c_void_p()
    status = lib.lsc4rec_scorer_open(str(folder).encode(), vocab_hash.encode() if vocab_hash else None, 1,
                                     ctypes.byref(handle))
    nb.check(lib, status)
    return handle


def _score(lib, scorer, hist, cand, room=None):
    hist, cand = np.ascontiguousarray(hist, dtype=np.int64), np.ascontiguousarray(cand, dtype=np.int64)
    out = np.zeros(len(cand) if room is None else room, dtype=np.float32)
    nb.check(lib, lib.lsc4rec_scorer_score(scorer, hist.ctypes.data_as(nb._I64P), hist.size,
                                           cand.ctypes.data_as(nb._I64P), cand.size, out.ctypes.data_as(nb._F32P),
                                           out.size))
    return out


def _resign(src: Path, dst: Path, data: bytes) -> Path:
    """A copy of `src` whose model.pte holds `data`, with the manifest's sha256 and size made to match."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "model.pte").write_bytes(data)
    manifest = json.loads((src / MANIFEST_NAME).read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def bad_folders(exported, tmp_path_factory) -> dict:
    """Artifact folders that must be refused at open: (folder, status, words of the message)."""
    sasrec, gru4rec = exported["sasrec"][1], exported["gru4rec"][1]
    work = tmp_path_factory.mktemp("bad")
    data = (sasrec / "model.pte").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    unsigned = Path(shutil.copytree(sasrec, work / "unsigned"))
    (unsigned / "model.pte").write_bytes(bytes(flipped))
    other = Path(shutil.copytree(sasrec, work / "other-format"))
    (other / MANIFEST_NAME).write_text((sasrec / MANIFEST_NAME).read_text().replace('"pte"', '"onnx"'))
    return {
        "truncated": (_resign(sasrec, work / "truncated", data[: len(data) // 2]), nb.E_MANIFEST, "cannot load"),
        "header_only": (_resign(sasrec, work / "header", data[:64]), nb.E_MANIFEST, "cannot load"),
        "resigned_other_model": (_resign(sasrec, work / "resigned", (gru4rec / "model.pte").read_bytes()),
                                 nb.E_MANIFEST, "golden"),
        "unsigned_change": (unsigned, nb.E_MANIFEST, "sha256"),
        "onnx_manifest": (other, nb.E_MANIFEST, "format"),
        "no_folder": (work / "missing", nb.E_MANIFEST, "no manifest"),
    }


@pytest.mark.parametrize("case", ["truncated", "header_only", "resigned_other_model", "unsigned_change",
                                  "onnx_manifest", "no_folder"])
def test_a_bad_artifact_is_refused_by_the_c_abi_and_the_cli(native_lib, bad_folders, case):
    folder, status, words = bad_folders[case]
    lib = nb.load_library()
    with pytest.raises(nb.NativeCallError) as info:
        _open(lib, folder)
    assert info.value.status == status and words in info.value.message and "\n" not in info.value.message
    proc = _cli("score", "--model", str(folder), "--history", "1", "--candidates", "1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr and "lsc4rec-native: error:" in proc.stderr


def test_a_manifest_for_another_catalogue_is_refused(native_lib, exported):
    lib = nb.load_library()
    folder = exported["sasrec"][1]
    with pytest.raises(nb.NativeCallError) as info:
        _open(lib, folder, vocab_hash="another-catalogue")
    assert info.value.status == nb.E_CATALOG and "vocab_hash" in info.value.message
    proc = _cli("score", "--model", str(folder), "--vocab-hash", "another-catalogue", "--history", "1",
                "--candidates", "1")
    assert proc.returncode == 2 and "another-catalogue" in proc.stderr


BAD_CALLS = {  # name: (history, candidates, room for scores, status, words of the message)
    "candidate_above_catalogue": ([1, 2], [3, 31], None, nb.E_UNKNOWN_ITEM, "candidates[1] = 31"),
    "candidate_padding": ([1], [0, 2], None, nb.E_UNKNOWN_ITEM, "candidates[0] = 0"),
    "negative_history_id": ([-4, 2], [3], None, nb.E_UNKNOWN_ITEM, "history[0] = -4"),
    "history_too_long": (list(range(1, CONFIG["max_len"] + 2)), [3], None, nb.E_ARGUMENT, "at most 8"),
    "too_many_candidates": ([1], [1] * (CANDIDATES_MAX + 1), None, nb.E_ARGUMENT, "1..64"),
    "scores_buffer_too_small": ([1], [1, 2, 3], 2, nb.E_ARGUMENT, "room for 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_gets_a_status_and_a_message_never_a_crash(native_lib, exported, case):
    hist, cand, room, status, words = BAD_CALLS[case]
    lib = nb.load_library()
    scorer = _open(lib, exported["sasrec"][1])
    try:
        with pytest.raises(nb.NativeCallError) as info:
            _score(lib, scorer, hist, cand, room)
        assert info.value.status == status and words in info.value.message
        assert _score(lib, scorer, [1, 2], [3, 4]).shape == (2,)  # the scorer still works afterwards
    finally:
        lib.lsc4rec_scorer_close(scorer)
    if room is None:  # the CLI sizes its own buffers
        proc = _cli("score", "--model", str(exported["sasrec"][1]), "--history", _ids(hist), "--candidates", _ids(cand))
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1


def test_null_pointers_are_refused(native_lib, exported):
    lib = nb.load_library()
    handle = ctypes.c_void_p()
    assert lib.lsc4rec_scorer_open(None, None, 1, ctypes.byref(handle)) == nb.E_ARGUMENT and not handle
    assert lib.lsc4rec_scorer_open(str(exported["sasrec"][1]).encode(), None, 1, None) == nb.E_ARGUMENT
    assert lib.lsc4rec_scorer_open(str(exported["sasrec"][1]).encode(), None, 7, ctypes.byref(handle)) == nb.E_ARGUMENT
    assert b"threads" in lib.lsc4rec_last_error()
    out = (ctypes.c_float * 4)()
    ids = (ctypes.c_int64 * 4)(1, 2, 3, 4)
    assert lib.lsc4rec_scorer_score(None, ids, 4, ids, 4, out, 4) == nb.E_ARGUMENT
    scorer = _open(lib, exported["sasrec"][1])
    try:
        for args, words in (((None, 4, ids, 4, out, 4), b"history"), ((ids, 4, None, 4, out, 4), b"candidates"),
                            ((ids, 4, ids, 4, None, 4), b"scores"), ((ids, 4, ids, 0, out, 4), b"candidates")):
            assert lib.lsc4rec_scorer_score(scorer, *args) == nb.E_ARGUMENT
            assert words in lib.lsc4rec_last_error()
        assert lib.lsc4rec_scorer_score(scorer, None, 0, ids, 4, out, 4) == nb.OK  # an empty history is all padding
    finally:
        lib.lsc4rec_scorer_close(scorer)
    lib.lsc4rec_scorer_close(None)


def test_the_cli_refuses_bad_usage(native_lib):
    for args in ([], ["explode"], ["score"], ["score", "--model"], ["bench", "--model", "x", "--calls", "many"]):
        proc = _cli(*args)
        assert proc.returncode == 2 and "lsc4rec-native: error:" in proc.stderr, args


# ------------------------------------------------------------------------------------ the Python runtime's backend


def test_load_reranker_refuses_a_bad_pte_before_any_inference(native_lib, bad_folders, exported):
    from device.runtime.artifact import load_reranker
    from shared.errors import InvalidArgumentError, ManifestError, UnknownItemError

    folder = bad_folders["resigned_other_model"][0]
    with pytest.raises(ManifestError, match="golden"):
        load_reranker(folder, backend="native")
    reranker = load_reranker(exported["sasrec"][1], backend="native")
    with pytest.raises(UnknownItemError):
        reranker.score(*_inputs(1, 5)[:1], np.array([[1, CONFIG["num_items"] + 1]]))
    with pytest.raises(InvalidArgumentError):
        reranker.score(_inputs(1, 5)[0], np.ones((1, CANDIDATES_MAX + 1), dtype=np.int64))


def test_the_check_command_opens_a_folder_and_a_crash_there_refuses_it(native_lib, exported, tmp_path, monkeypatch):
    """`lsc4rec-native check` opens a folder with every check; the runtime opens each folder that way in a process
    of its own first, so a program that crashes the compiler (a re-signed corrupt .pte) never loads in-process."""
    from device.runtime.artifact import load_reranker
    from shared.errors import ManifestError

    folder = exported["sasrec"][1]
    done = _cli("check", "--model", str(folder))
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True
    done = _cli("check", "--model", str(folder), "--kind", "user-encoder")
    assert done.returncode == 2 and "lsc4rec_scorer_open" in done.stderr
    # the same library beside a check command that dies as XNNPACK's compiler does on such a program
    stand_in = tmp_path / "lib"
    stand_in.mkdir()
    for item in BUILD.glob("*.so*"):
        (stand_in / item.name).symlink_to(item)
    (stand_in / "lsc4rec-native").write_text("#!/bin/sh\nkill -SEGV $$\n")
    (stand_in / "lsc4rec-native").chmod(0o755)
    monkeypatch.setenv("LSC4REC_NATIVE_LIB", str(stand_in / "liblsc4rec_native.so"))
    with pytest.raises(ManifestError, match="crashed \\(SIGSEGV\\).*refused"):
        load_reranker(folder, backend="native")


# The start of a child script in which torch, executorch and transformers cannot be imported.
BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "executorch", "transformers"):
                raise ImportError(f"{{name}} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")
TORCH_FREE = BLOCK_TORCH + textwrap.dedent("""
    from device.runtime.artifact import load_reranker
    from device.runtime.policies import parse_policy
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.records import Candidate, CandidateResponse
    reranker = load_reranker({model!r})
    response = CandidateResponse(tuple(Candidate(i, -float(i)) for i in range(1, 13)), "g", 0.0)
    session = DeviceSession(SessionConfig(slate_size=5, num_candidates=12), reranker, parse_policy("budget:0.3"),
                            lambda: 0.0, candidates=response)
    slates = [list(session.on_event(item).slate.items) for item in (20, 1, 2, 21)]
    print(json.dumps({{"backend": type(reranker).__name__, "slates": slates,
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "executorch"))}}))
""")


def test_a_session_runs_a_pte_where_torch_and_executorch_cannot_be_imported(native_lib, exported):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE.format(model=str(exported["sasrec"][1]))],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "NativeReranker" and out["loaded"] == []
    assert all(len(s) == 5 for s in out["slates"])


def test_the_build_runs_without_the_wheel_it_was_built_against(native_lib):
    """Only $ORIGIN in the search path: the ExecuTorch libraries are the copies beside the runner."""
    proc = subprocess.run(["ldd", str(BUILD / "lsc4rec-native")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("ldd is not available")
    resolved = [line for line in proc.stdout.splitlines() if "executorch" in line]
    assert resolved and all(str(BUILD) in line for line in resolved), proc.stdout
    assert "python" not in proc.stdout and "torch" not in proc.stdout.replace("executorch", "")
