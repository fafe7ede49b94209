"""manifest.json: strict reading, atomic writing, artifact verification."""
import json

import pytest

from shared.errors import ManifestError
from shared.manifest import new_version, read_manifest, sha256_file, verify_artifact, write_manifest
from tests.shared.test_wire import _manifest
import dataclasses


def _artifact(tmp_path, payload=b"0123456789"):
    (tmp_path / "model.onnx").write_bytes(payload)
    manifest = dataclasses.replace(_manifest(), sha256=sha256_file(tmp_path / "model.onnx"), size_bytes=len(payload))
    write_manifest(manifest, tmp_path)
    return manifest


def test_round_trip_and_verify(tmp_path):
    manifest = _artifact(tmp_path)
    assert read_manifest(tmp_path) == manifest
    assert verify_artifact(tmp_path)[0] == manifest


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("sha256"), "missing"),
    (lambda d: d.update(extra=1), "unknown"),
    (lambda d: d.update(history_length=0), "history_length"),
    (lambda d: d.update(format="tflite"), "format"),
    (lambda d: d.update(file_name="../x"), "file_name"),
    (lambda d: d.update(inputs=[{"name": "x"}]), "inputs"),
    (lambda d: d.update(golden={"history": [1], "candidates": [1], "scores": [0.0]}), "golden"),
    (lambda d: d.update(golden={"history": [0] * 50, "candidates": [1, 2], "scores": [0.0]}), "golden"),
    (lambda d: d.update(version="../escape"), "version"),
    (lambda d: d.update(untrained_items=[5, 3]), "untrained_items"),
    (lambda d: d.update(untrained_items=[0]), "untrained_items"),
    (lambda d: d.update(untrained_items=[1683]), "untrained_items"),
])
def test_bad_fields_are_refused(tmp_path, mutate, message):
    _artifact(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    mutate(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_tampered_or_truncated_artifact(tmp_path):
    _artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"0123456788")
    with pytest.raises(ManifestError, match="sha256"):
        verify_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"01234")
    with pytest.raises(ManifestError, match="size"):
        verify_artifact(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="JSON"):
        read_manifest(tmp_path)


def test_versions_sort_in_creation_order():
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    versions = [new_version("f" * 64, t0 + timedelta(microseconds=n)) for n in (0, 1, 1000, 10**6)]
    assert versions == sorted(versions)


def test_untrained_items_round_trip_and_an_older_manifest_without_them_loads(tmp_path):
    manifest = _artifact(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data.pop("untrained_items") == []
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(tmp_path).untrained_items == ()
    with_items = dataclasses.replace(manifest, untrained_items=(3, 17, 1682))
    write_manifest(with_items, tmp_path)
    assert read_manifest(tmp_path) == with_items
