"""Model registry: atomic publish, newest verified version per format, broken versions refused, live rescans."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest

from cloud.errors import NotFoundError
from cloud.registry import ModelRegistry, publish
from shared import wire
from shared.errors import ManifestError
from shared.generator import PopularityGenerator
from shared.manifest import MANIFEST_NAME, new_version, sha256_file, write_manifest
from shared.records import ModelFormat, ModelManifest, TensorSpec
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc

_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_artifact(folder: Path, payload: bytes, fmt: ModelFormat = ModelFormat.ONNX, minute: int = 0) -> ModelManifest:
    """An artifact folder as device/training/export.py writes it: the file + manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"model.{fmt.value}"
    (folder / name).write_bytes(payload)
    sha = sha256_file(folder / name)
    manifest = ModelManifest(
        model_name="sasrec", version=new_version(sha, _T0 + timedelta(minutes=minute)), format=fmt,
        file_name=name, sha256=sha, size_bytes=len(payload),
        inputs=(TensorSpec("history", "int64", ("batch", 50)), TensorSpec("candidates", "int64", ("batch", "n"))),
        outputs=(TensorSpec("scores", "float32", ("batch", "n")),),
        history_length=50, num_items=50, vocab_hash="v" * 16, created_at=_T0.isoformat(), metrics={"ndcg@10": 0.1})
    write_manifest(manifest, folder)
    return manifest


def test_newest_version_per_format_and_live_pickup(tmp_path):
    models = tmp_path / "models"
    registry = ModelRegistry(models)
    assert registry.scan() == {}
    v1 = make_artifact(tmp_path / "a1", b"one" * 100, minute=1)
    p1 = make_artifact(tmp_path / "p1", b"pte" * 100, ModelFormat.PTE, minute=2)
    publish(tmp_path / "a1", models)
    publish(tmp_path / "p1", models)
    assert registry.latest(ModelFormat.ONNX).manifest == v1
    assert registry.latest(ModelFormat.PTE).manifest == p1
    v2 = make_artifact(tmp_path / "a2", b"two" * 100, minute=3)
    folder = publish(tmp_path / "a2", models)
    assert folder.name == f"onnx-{v2.version}"
    assert registry.latest(ModelFormat.ONNX).manifest == v2  # no restart needed
    assert registry.find(v1.version, ModelFormat.ONNX).manifest == v1  # older ones stay downloadable
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    with pytest.raises(ManifestError, match="already published"):
        publish(tmp_path / "a2", models)


@pytest.mark.parametrize("damage", ["checksum", "manifest", "missing_file"])
def test_broken_new_version_is_refused_previous_kept(tmp_path, damage):
    models = tmp_path / "models"
    good = make_artifact(tmp_path / "good", b"good" * 50, minute=1)
    publish(tmp_path / "good", models)
    registry = ModelRegistry(models)
    assert registry.latest(ModelFormat.ONNX).manifest == good
    # A newer version lands in the folder by hand, broken (publish() itself would refuse it).
    bad = models / "onnx-broken"
    newer = make_artifact(bad, b"newer" * 50, minute=5)
    if damage == "checksum":
        (bad / newer.file_name).write_bytes(b"tampered" * 50)
    elif damage == "manifest":
        (bad / MANIFEST_NAME).write_text(json.dumps({"version": "x"}))
    else:
        os.remove(bad / newer.file_name)
    assert registry.latest(ModelFormat.ONNX).manifest == good
    assert "onnx-broken" in registry.refused
    with pytest.raises(NotFoundError):
        registry.find(newer.version, ModelFormat.ONNX)


def test_publish_refuses_a_broken_artifact(tmp_path):
    manifest = make_artifact(tmp_path / "a", b"abc" * 10)
    (tmp_path / "a" / manifest.file_name).write_bytes(b"xyz" * 10)
    with pytest.raises(ManifestError, match="sha256"):
        publish(tmp_path / "a", tmp_path / "models")
    assert not (tmp_path / "models").exists()  # verified before anything is written


def test_server_serves_newest_and_streams_exact_bytes(tmp_path):
    from cloud.server import ServerConfig, create_server

    models = tmp_path / "models"
    payload = bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8))
    v1 = make_artifact(tmp_path / "a1", payload, minute=1)
    publish(tmp_path / "a1", models)
    config = ServerConfig(address="127.0.0.1:0", chunk_bytes=65536, grace_s=0.5)
    server, port = create_server(config, PopularityGenerator(np.arange(51)), models, address="127.0.0.1:0")
    try:
        stub = pb_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        reply = stub.GetLatestManifest(pb.GetLatestManifestRequest(current_version=""), timeout=5)
        assert wire.manifest_from_pb(reply.manifest) == v1 and reply.update_available
        same = stub.GetLatestManifest(pb.GetLatestManifestRequest(current_version=v1.version), timeout=5)
        assert not same.update_available
        chunks = list(stub.DownloadModel(pb.DownloadModelRequest(version=v1.version), timeout=10))
        assert [c.offset for c in chunks] == [0, 65536, 131072, 196608]
        assert chunks[0].sha256 == v1.sha256 and chunks[0].total_size == len(payload)
        assert b"".join(c.data for c in chunks) == payload
        v2 = make_artifact(tmp_path / "a2", b"v2" * 10, minute=2)
        publish(tmp_path / "a2", models)
        reply = stub.GetLatestManifest(pb.GetLatestManifestRequest(current_version=v1.version), timeout=5)
        assert reply.manifest.version == v2.version and reply.update_available
    finally:
        server.stop(0)


def test_publish_command_and_serve_help(tmp_path, capsys):
    from simulator.cli import main

    manifest = make_artifact(tmp_path / "a", b"cli" * 20)
    assert main(["cloud", "publish", str(tmp_path / "a"), "--models", str(tmp_path / "models"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == manifest.version and Path(out["folder"]).parent == tmp_path / "models"
    assert main(["cloud", "publish", str(tmp_path / "a"), "--models", str(tmp_path / "models")]) == 2
    assert "already published" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["cloud", "serve", "--help"])
    assert done.value.code == 0
    assert "--popularity" in capsys.readouterr().out
