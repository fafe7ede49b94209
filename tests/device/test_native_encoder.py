"""The native user encoder (device/native's lsc4rec_encoder_* / lsc4rec_user_state_*, native_backend.NativeUserEncoder):
parity with the ONNX encoder over many events, rebuild against replay, refused artifacts and bad calls through ctypes
and the CLI, the session on it, and a load where torch and executorch cannot be imported.

The library is built as tests/device/test_native.py builds it (the same skip rule where a tool is missing).
"""
from __future__ import annotations

import ctypes
import hashlib
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
from device.runtime.encoder import POSITION_LIMIT, UserEncoder
from shared.manifest import MANIFEST_NAME
from tests.device.test_native import BLOCK_TORCH, ROOT, _cli, native_lib  # noqa: F401 (native_lib is a fixture)

N, T, D = 60, 8, 16
PARITY_ATOL = 1e-5
EVENTS = 150
# name: (model config, has a partition head); the window shape (learned positions) goes without one
MODELS = {"sasrec-rotary": ({"hidden": D, "heads": 2, "inner": 32, "layers": 2, "positions": "rotary"}, True),
          "gru4rec": ({"hidden": D, "gru_hidden": 24, "layers": 2}, True),
          "sasrec": ({"hidden": D, "heads": 2, "inner": 32, "layers": 1}, False)}


def _model(name: str, seed: int = 3):
    import torch

    from device.training.models import build_model

    torch.manual_seed(seed)
    model = build_model(name.split("-")[0], {"num_items": N, "max_len": T, **MODELS[name][0]}).eval()
    with torch.no_grad():  # trained-like magnitudes, so user vectors are not all near zero
        model.item_emb.weight.mul_(20.0)
        model.item_emb.weight[0].zero_()
    return model


def _export(name: str, out: Path, formats=("user-encoder", "user-encoder-pte"), seed: int = 3) -> dict[str, Path]:
    import torch

    pytest.importorskip("executorch.exir")
    from device.training.encoder_export import export_user_encoder
    from device.training.partition_head import PartitionHead

    model = _model(name, seed)
    torch.manual_seed(seed + 1)
    head = PartitionHead(D, width=32).eval() if MODELS[name][1] else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {fmt: export_user_encoder(model, name, "vocab-enc", out, seed=seed, head=head, fmt=fmt)
                for fmt in formats}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{model name: {"user-encoder": ONNX folder, "user-encoder-pte": .pte folder}}."""
    return {name: _export(name, tmp_path_factory.mktemp(name)) for name in MODELS}


def _vectors(count: int, seed: int = 0) -> np.ndarray:
    """Item vectors as a device receives them: int8 levels times a per-item scale."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(-127, 128, (count, D)).astype(np.float32)
    return levels * rng.uniform(0.02, 0.2, (count, 1)).astype(np.float32)


def _load(folder: Path):
    from device.runtime.artifact import load_reranker

    return load_reranker(folder, vocab_hash="vocab-enc")


# ------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(MODELS))
def test_native_user_vectors_and_partition_equal_onnx(native_lib, exported, name):
    onnx, native = _load(exported[name]["user-encoder"]), _load(exported[name]["user-encoder-pte"])
    assert isinstance(native, nb.NativeUserEncoder) and isinstance(native, UserEncoder)
    assert (native.shape, native.dim, native.has_partition) == (onnx.shape, D, MODELS[name][1])
    vectors = _vectors(EVENTS)
    a, b = onnx.new_state(), native.new_state()
    assert b.user is None and b.partition is None
    users, partitions = [], []
    for vector in vectors:  # past the window many times over: the cached shape's ring of T - 1 slots wraps
        a.append(vector)
        b.append(vector)
        assert b.user.dtype == np.float32 and b.user.shape == (D,)
        users.append(float(np.abs(a.user - b.user).max()))
        if onnx.has_partition:
            assert b.partition.dtype == np.float64 and b.partition.shape == (2,)
            partitions.append(float(np.abs(a.partition - b.partition).max()))
        else:
            assert b.partition is None
    assert max(users) <= PARITY_ATOL and max(partitions, default=0.0) <= PARITY_ATOL, (max(users), partitions)
    for n in (1, T - 1, T, 3 * T):  # rebuild, on both backends, and against replaying the window
        a.rebuild(vectors[:n])
        b.rebuild(vectors[:n])
        replay = native.new_state()
        for vector in vectors[:n][-T:]:
            replay.append(vector)
        np.testing.assert_allclose(b.user, a.user, atol=PARITY_ATOL, rtol=0)
        np.testing.assert_allclose(b.user, replay.user, atol=1e-6, rtol=0)
        if onnx.has_partition:
            np.testing.assert_allclose(b.partition, replay.partition, atol=1e-6, rtol=0)
    assert b.rebuild(vectors[:0]) is None and b.user is None  # no vectors: a new user's state again
    b.append(vectors[0])
    fresh = native.new_state()
    np.testing.assert_array_equal(b.user, fresh.append(vectors[0]))


def test_a_cached_state_restarts_its_positions_like_onnx(native_lib, exported):
    """At POSITION_LIMIT both re-encode the window (positions from 0 again) and go on stepping."""
    onnx, native = (_load(exported["sasrec-rotary"][fmt]) for fmt in ("user-encoder", "user-encoder-pte"))
    vectors = _vectors(64, seed=1)
    a, b = onnx.new_state(), native.new_state()
    gap = 0.0
    for n in range(POSITION_LIMIT + 2 * T):
        a.append(vectors[n % len(vectors)])
        b.append(vectors[n % len(vectors)])
        if n >= POSITION_LIMIT - 2:
            gap = max(gap, float(np.abs(a.user - b.user).max()))
    assert a._state[3] < 3 * T and gap <= PARITY_ATOL  # the ONNX state was rebuilt too


def test_the_cli_encodes_as_python_does(native_lib, exported):
    folder = exported["gru4rec"]["user-encoder-pte"]
    vectors = _vectors(T + 3, seed=2)
    rows = ";".join(",".join(repr(float(v)) for v in row) for row in vectors)
    proc = _cli("encode", "--model", str(folder), "--vectors", rows)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["shape"], out["dim"], out["history_length"], out["has_partition"]) == ("recurrent", D, T, True)
    state = _load(exported["gru4rec"]["user-encoder"]).new_state()
    for row, user in zip(vectors, out["users"]):
        np.testing.assert_allclose(user, state.append(row), atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(out["log_partition"], state.partition, atol=PARITY_ATOL, rtol=0)
    proc = _cli("encode", "--model", str(folder), "--vectors", rows, "--mode", "rebuild")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(json.loads(proc.stdout)["user"], state.rebuild(vectors), atol=PARITY_ATOL, rtol=0)
    proc = _cli("encode-bench", "--model", str(folder), "--events", "200")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["events"] == 200 and 0 < out["append_p50_us"] <= out["append_p99_us"] and out["rebuild_p50_us"] > 0


# ------------------------------------------------------------------------------------------ refused artifacts


def _resign(src: Path, dst: Path, data: bytes) -> Path:
    """A copy of `src` whose encoder.pte holds `data`, with the manifest's sha256 and size made to match."""
    shutil.copytree(src, dst)
    (dst / "encoder.pte").write_bytes(data)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


def _edit_manifest(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    edit(manifest)
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def bad_folders(exported, tmp_path_factory) -> dict:
    """Folders lsc4rec_encoder_open must refuse: (folder, status, words of the message)."""
    gru = exported["gru4rec"]["user-encoder-pte"]
    work = tmp_path_factory.mktemp("bad")
    data = (gru / "encoder.pte").read_bytes()
    other = _export("gru4rec", work / "other", formats=("user-encoder-pte",), seed=9)["user-encoder-pte"]
    return {
        "truncated": (_resign(gru, work / "truncated", data[: len(data) // 2]), nb.E_MANIFEST, "cannot load"),
        "resigned_other_weights": (_resign(gru, work / "resigned", (other / "encoder.pte").read_bytes()),
                                   nb.E_MANIFEST, "golden"),
        "resigned_other_shape": (_resign(gru, work / "shape", (exported["sasrec-rotary"]["user-encoder-pte"] /
                                                                "encoder.pte").read_bytes()),
                                 nb.E_MANIFEST, "program has 5 inputs"),
        "golden_score_changed": (_edit_manifest(gru, work / "golden", lambda m: m["golden"]["scores"].__setitem__(
            0, m["golden"]["scores"][0] + 0.5)), nb.E_MANIFEST, "golden"),
        "golden_without_vectors": (_edit_manifest(gru, work / "novectors", lambda m: m["golden"].pop("vectors")),
                                   nb.E_MANIFEST, "'vectors'"),
        "scorer_kind": (_edit_manifest(gru, work / "kind", lambda m: m.update(kind="scorer")), nb.E_MANIFEST,
                        "lsc4rec_scorer_open"),
        "onnx_artifact": (exported["gru4rec"]["user-encoder"], nb.E_MANIFEST, "format"),
        "no_folder": (work / "missing", nb.E_MANIFEST, "no manifest"),
    }


def _open(lib, folder, vocab_hash=None, threads=1):
    handle = ctypes.c_void_p()
    nb.check(lib, lib.lsc4rec_encoder_open(str(folder).encode(), vocab_hash.encode() if vocab_hash else None, threads,
                                           ctypes.byref(handle)))
    return handle


@pytest.mark.parametrize("case", ["truncated", "resigned_other_weights", "resigned_other_shape",
                                  "golden_score_changed", "golden_without_vectors", "scorer_kind", "onnx_artifact",
                                  "no_folder"])
def test_a_bad_encoder_artifact_is_refused_by_the_c_abi_the_cli_and_python(native_lib, bad_folders, case):
    from device.runtime.artifact import load_reranker
    from shared.errors import ManifestError

    folder, status, words = bad_folders[case]
    lib = nb.load_library()
    with pytest.raises(nb.NativeCallError) as info:
        _open(lib, folder)
    assert info.value.status == status and words in info.value.message and "\n" not in info.value.message
    proc = _cli("encode", "--model", str(folder), "--vectors", ",".join(["0.5"] * D))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr and "lsc4rec-native: error:" in proc.stderr
    if case not in ("onnx_artifact", "no_folder"):  # those are other artifacts to Python (an ONNX one, none)
        with pytest.raises(ManifestError):
            load_reranker(folder, backend="native")


def test_each_runner_refuses_the_other_kind_and_another_catalogue(native_lib, exported):
    lib = nb.load_library()
    folder = exported["gru4rec"]["user-encoder-pte"]
    handle = ctypes.c_void_p()
    assert lib.lsc4rec_scorer_open(str(folder).encode(), None, 1, ctypes.byref(handle)) == nb.E_MANIFEST
    assert b"lsc4rec_encoder_open" in lib.lsc4rec_last_error() and not handle
    proc = _cli("score", "--model", str(folder), "--history", "1", "--candidates", "1")
    assert proc.returncode == 2 and "lsc4rec_encoder_open" in proc.stderr
    with pytest.raises(nb.NativeCallError) as info:
        _open(lib, folder, vocab_hash="another-catalogue")
    assert info.value.status == nb.E_CATALOG and "vocab_hash" in info.value.message


# --------------------------------------------------------------------------------------------------- bad calls


def _ptr(array):
    return None if array is None else array.ctypes.data


def _append(lib, state, vector, dim=D, room=D, partition=True):
    vector = None if vector is None else np.ascontiguousarray(vector, dtype=np.float32)
    user, log_partition = np.zeros(room, dtype=np.float32), np.zeros(2, dtype=np.float32) if partition else None
    nb.check(lib, lib.lsc4rec_user_state_append(state, _ptr(vector), dim, _ptr(user), room, _ptr(log_partition)))
    return user


BAD_CALLS = {  # name: (keyword arguments of _append, words of the message)
    "wrong_dim": ({"dim": D + 1}, f"dim = {D + 1}"),
    "nan": ({"vector": np.where(np.arange(D) == 3, np.nan, 0.5)}, "vector[3] = nan: not finite"),
    "inf": ({"vector": np.where(np.arange(D) == 0, -np.inf, 0.5)}, "vector[0] = -inf: not finite"),
    "null_vector": ({"vector": None}, "vector: NULL buffer"),
    "user_buffer_too_small": ({"room": D - 1}, f"room for {D - 1}"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_a_bad_call_gets_a_status_and_leaves_the_state_as_it_was(native_lib, exported, case):
    lib = nb.load_library()
    encoder = _open(lib, exported["sasrec-rotary"]["user-encoder-pte"])
    state, twin = ctypes.c_void_p(), ctypes.c_void_p()
    nb.check(lib, lib.lsc4rec_user_state_new(encoder, ctypes.byref(state)))
    nb.check(lib, lib.lsc4rec_user_state_new(encoder, ctypes.byref(twin)))
    try:
        vectors = _vectors(3, seed=4)
        for vector in vectors[:2]:
            _append(lib, state, vector)
            _append(lib, twin, vector)
        kwargs, words = dict(BAD_CALLS[case][0]), BAD_CALLS[case][1]
        with pytest.raises(nb.NativeCallError) as info:
            _append(lib, state, kwargs.pop("vector", vectors[2]), **kwargs)
        assert info.value.status == nb.E_ARGUMENT and words in info.value.message, info.value.message
        np.testing.assert_array_equal(_append(lib, state, vectors[2]), _append(lib, twin, vectors[2]))
    finally:
        lib.lsc4rec_user_state_free(state)
        lib.lsc4rec_user_state_free(twin)
        lib.lsc4rec_encoder_close(encoder)


def test_null_pointers_and_other_misuse_are_refused(native_lib, exported):
    lib = nb.load_library()
    folder = str(exported["sasrec"]["user-encoder-pte"]).encode()  # the window shape, without a partition head
    handle = ctypes.c_void_p()
    assert lib.lsc4rec_encoder_open(None, None, 1, ctypes.byref(handle)) == nb.E_ARGUMENT and not handle
    assert lib.lsc4rec_encoder_open(folder, None, 1, None) == nb.E_ARGUMENT
    assert lib.lsc4rec_encoder_open(folder, None, 7, ctypes.byref(handle)) == nb.E_ARGUMENT
    assert b"threads" in lib.lsc4rec_last_error()
    assert lib.lsc4rec_user_state_new(None, ctypes.byref(handle)) == nb.E_ARGUMENT
    vector, user = np.full(D, 0.5, dtype=np.float32), np.zeros(D, dtype=np.float32)
    assert lib.lsc4rec_user_state_append(None, vector.ctypes.data, D, user.ctypes.data, D, None) == nb.E_ARGUMENT
    assert lib.lsc4rec_user_state_rebuild(None, vector.ctypes.data, 1, D, user.ctypes.data, D, None) == nb.E_ARGUMENT
    assert (lib.lsc4rec_encoder_dim(None), lib.lsc4rec_encoder_history_length(None), lib.lsc4rec_encoder_shape(None),
            lib.lsc4rec_encoder_version(None)) == (0, 0, b"", b"")
    encoder = _open(lib, exported["sasrec"]["user-encoder-pte"])
    assert lib.lsc4rec_encoder_shape(encoder) == b"window" and lib.lsc4rec_encoder_has_partition(encoder) == 0
    state = ctypes.c_void_p()
    nb.check(lib, lib.lsc4rec_user_state_new(encoder, ctypes.byref(state)))
    assert lib.lsc4rec_user_state_new(encoder, None) == nb.E_ARGUMENT
    lib.lsc4rec_encoder_close(encoder)  # the state keeps the encoder alive
    try:
        with pytest.raises(nb.NativeCallError, match="no partition head"):
            _append(lib, state, vector)
        assert lib.lsc4rec_user_state_append(state, vector.ctypes.data, D, None, D, None) == nb.E_ARGUMENT
        assert b"user: NULL buffer" in lib.lsc4rec_last_error()
        rows = _vectors(4, seed=5)
        rows[2, 7] = np.nan
        assert lib.lsc4rec_user_state_rebuild(state, rows.ctypes.data, 4, D, user.ctypes.data, D, None) == nb.E_ARGUMENT
        assert b"vectors[2][7] = nan" in lib.lsc4rec_last_error()
        assert lib.lsc4rec_user_state_rebuild(state, None, 2, D, user.ctypes.data, D, None) == nb.E_ARGUMENT
        assert lib.lsc4rec_user_state_rebuild(state, None, 0, D, None, 0, None) == nb.OK  # a reset
        np.testing.assert_array_equal(_append(lib, state, rows[0], partition=False),
                                      _load(exported["sasrec"]["user-encoder-pte"]).new_state().append(rows[0]))
    finally:
        lib.lsc4rec_user_state_free(state)
    lib.lsc4rec_user_state_free(None)
    lib.lsc4rec_encoder_close(None)


def test_the_cli_refuses_bad_vectors_and_usage(native_lib, exported):
    folder = str(exported["gru4rec"]["user-encoder-pte"])
    good = ",".join(["0.5"] * D)
    for rows, words in ((",".join(["0.5"] * (D - 1)), f"dim = {D - 1}"), (f"{good};nan" + ",0.5" * (D - 1),
                                                                          "vector[0] = nan"),
                        (f"{good};" + ",".join(["0.5"] * (D + 1)), "vector 1 has"),
                        ("0.5,x", "'x', not a number"), ("", "no vector")):
        proc = _cli("encode", "--model", folder, "--vectors", rows)
        assert proc.returncode == 2 and words in proc.stderr and proc.stdout == "", (rows, proc.stderr)
    for args in (["encode", "--model", folder], ["encode", "--model", folder, "--vectors", good, "--mode", "x"],
                 ["encode-bench", "--model", folder, "--events", "0"], ["encode", "--model", folder, "--seed", "1"]):
        proc = _cli(*args)
        assert proc.returncode == 2 and "lsc4rec-native: error:" in proc.stderr, args


# --------------------------------------------------------------------------------------- the Python runtime's side


def test_a_session_on_the_native_encoder_scores_as_on_onnx(native_lib, exported):
    """VectorScorer works unchanged: the same slates and logits event by event, vectors missing and arriving."""
    from device.runtime.policies import parse_policy
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.records import Candidate, CandidateResponse
    from shared.vector_table import VECTOR_TABLE_NAME, VectorTable

    def source(folder: Path):  # a cloud sending the rows of that version's table (both tables hold the same rows)
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        table = VectorTable.load(folder / VECTOR_TABLE_NAME, manifest["version"], manifest["vector_table_sha256"])

        class Source:
            def get_candidates(self, request):
                ids = [i for i in range(20, 50) if i not in request.history]
                return CandidateResponse(tuple(Candidate(i, -0.1 * k) for k, i in enumerate(ids)), "gen", 1.0,
                                         request.request_id, table.lookup(ids + list(request.missing_vectors)))
        return Source()

    folders = [exported["sasrec-rotary"][fmt] for fmt in ("user-encoder", "user-encoder-pte")]
    sessions = [DeviceSession(SessionConfig(measure="est-regret", num_candidates=30, slate_size=5), _load(folder),
                              parse_policy("every:3"), lambda: 0.0, source=source(folder), history=tuple(range(1, 6)))
                for folder in folders]
    for session in sessions:
        assert session.refresh() == (True, "")
    for item in (7, 55, 21, 3, 9, 30, 12):  # 55 has no vector yet: missing, then rebuilt when a list brings it
        results = [session.on_event(item) for session in sessions]
        assert results[0].slate.items == results[1].slate.items
        a, b = (s._srm for s in sessions)
        np.testing.assert_allclose(a.state.user, b.state.user, atol=PARITY_ATOL, rtol=0)
        np.testing.assert_allclose(a.log_partition(), b.log_partition(), atol=PARITY_ATOL, rtol=0)
    assert type(sessions[1]._srm.state).__name__ == "NativeUserState"


TORCH_FREE = BLOCK_TORCH + textwrap.dedent("""
    import numpy as np
    from device.runtime.artifact import load_reranker
    from device.runtime.cli import bench_figures
    from pathlib import Path
    encoder = load_reranker({model!r})
    state = encoder.new_state()
    users = [state.append(np.full(encoder.dim, 0.1 * k, dtype=np.float32)).tolist() for k in range(1, 4)]
    figures = bench_figures(Path({model!r}), events=300, num_candidates=20, history=40, catalogue=2000)
    print(json.dumps({{"backend": type(encoder).__name__, "users": users, "event_p50_us": figures["event_p50_us"],
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "executorch"))}}))
""")


def test_the_native_encoder_runs_a_session_where_torch_and_executorch_cannot_be_imported(native_lib, exported):
    folder = exported["gru4rec"]["user-encoder-pte"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE.format(model=str(folder))], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "NativeUserEncoder" and out["loaded"] == [] and out["event_p50_us"] > 0
    state = _load(exported["gru4rec"]["user-encoder"]).new_state()
    for k, user in enumerate(out["users"], start=1):
        np.testing.assert_allclose(user, state.append(np.full(D, 0.1 * k, dtype=np.float32)), atol=PARITY_ATOL)


def test_a_user_encoder_pte_is_not_run_by_the_executorch_bindings(native_lib, exported):
    from device.runtime.artifact import load_reranker
    from shared.errors import ManifestError

    with pytest.raises(ManifestError, match="native backend"):
        load_reranker(exported["gru4rec"]["user-encoder-pte"], backend="executorch")


def test_export_writes_both_encoder_formats_from_a_checkpoint(tmp_path, capsys):
    """`export srm --format user-encoder,user-encoder-pte`: one folder each, the same vector table."""
    pytest.importorskip("executorch.exir")
    from device.training.artifacts import make_checkpoint, save_checkpoint
    from device.training.train import TrainConfig
    from simulator.cli import main

    model = _model("gru4rec")
    save_checkpoint(make_checkpoint("gru4rec", model, TrainConfig(), "vocab-enc", {}, "stream", []),
                    tmp_path / "run" / "srm.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["export", "srm", "--ckpt", str(tmp_path / "run"), "--format", "user-encoder,user-encoder-pte",
                   "--out", str(tmp_path / "out"), "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert rc == 0 and figures["user-encoder-pte.parity_max_abs_diff"] < 1e-4
    onnx, pte = (json.loads((tmp_path / "out" / fmt / MANIFEST_NAME).read_text())
                 for fmt in ("user-encoder", "user-encoder-pte"))
    assert (pte["format"], pte["kind"], pte["file_name"]) == ("pte", "user-encoder", "encoder.pte")
    assert pte["vector_table_sha256"] == onnx["vector_table_sha256"] and pte["golden"]["vectors"]


def test_the_cloud_sends_rows_for_a_pte_encoder_version(exported, tmp_path):
    """A device running the .pte encoder names its own version; the registry finds that version's table."""
    from cloud.registry import ModelRegistry, publish
    from cloud.vectors import VectorTables

    folder = exported["gru4rec"]["user-encoder-pte"]
    publish(folder, tmp_path / "models")
    version = json.loads((folder / MANIFEST_NAME).read_text())["version"]
    table = VectorTables(ModelRegistry(tmp_path / "models")).load(version)
    assert table.model_version == version and table.values.shape[1] == D
