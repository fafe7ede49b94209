"""Read, write and verify `manifest.json`, the description that travels with every SRM artifact."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

from shared.errors import ManifestError
from shared.records import GoldenExample, ModelFormat, ModelManifest, TensorSpec

MANIFEST_NAME = "manifest.json"
KINDS = ("scorer", "user-encoder")  # ModelManifest.kind
_OPTIONAL = ("metrics", "golden", "untrained_items", "kind", "vector_dim", "vector_table_sha256")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_to_dict(manifest: ModelManifest) -> dict:
    """JSON-ready dict (enums as their value, tuples as lists)."""
    data = dataclasses.asdict(manifest)
    data["format"] = manifest.format.value
    return data


def manifest_from_dict(data: dict, source: str = "manifest") -> ModelManifest:
    """Validate every field and build the record; raises ManifestError naming the field."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(ModelManifest)}
    missing = sorted(n for n in names if n not in data and n not in _OPTIONAL)
    if missing:
        raise ManifestError(f"{source}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ManifestError(f"{source}: unknown field(s) {', '.join(unknown)}")

    def check(name: str, kind: type | tuple[type, ...]):
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ManifestError(f"{source}: field '{name}' = {value!r} has the wrong type")
        return value

    try:
        fmt = ModelFormat(data["format"])
    except ValueError:
        raise ManifestError(f"{source}: field 'format' = {data['format']!r} is not one of onnx, pte") from None
    sha = check("sha256", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"{source}: field 'sha256' = {sha!r} is not a hex sha256")
    for name in ("history_length", "num_items", "size_bytes"):
        if check(name, int) <= 0:
            raise ManifestError(f"{source}: field '{name}' = {data[name]!r} must be positive")
    version = check("version", str)
    if not _SAFE_NAME.fullmatch(version):
        raise ManifestError(f"{source}: field 'version' = {version!r} must be a plain name "
                            "(letters, digits, '.', '_', '-'; at most 128; not starting with '.')")
    file_name = check("file_name", str)
    if not file_name or "/" in file_name or "\\" in file_name or file_name.startswith("."):
        raise ManifestError(f"{source}: field 'file_name' = {file_name!r} must be a plain file name")
    kind, dim, table_sha = _kind(data, source)
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ManifestError(f"{source}: field 'metrics' = {metrics!r} must map names to numbers")
    return ModelManifest(
        model_name=check("model_name", str),
        version=version,
        format=fmt,
        file_name=file_name,
        sha256=sha,
        size_bytes=data["size_bytes"],
        inputs=_specs(data, "inputs", source),
        outputs=_specs(data, "outputs", source),
        history_length=data["history_length"],
        num_items=data["num_items"],
        vocab_hash=check("vocab_hash", str),
        created_at=check("created_at", str),
        metrics={str(k): float(v) for k, v in metrics.items()},
        golden=_golden(data.get("golden"), data["history_length"], source),
        untrained_items=_untrained(data.get("untrained_items", []), data["num_items"], source),
        kind=kind, vector_dim=dim, vector_table_sha256=table_sha,
    )


def _kind(data: dict, source: str) -> tuple[str, int, str]:
    """kind (default "scorer"), vector_dim and vector_table_sha256, which a "user-encoder" must give."""
    kind = data.get("kind") or "scorer"
    if kind not in KINDS:
        raise ManifestError(f"{source}: field 'kind' = {kind!r} is not one of {', '.join(KINDS)}")
    dim, sha = data.get("vector_dim", 0), data.get("vector_table_sha256", "")
    if kind == "user-encoder":
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ManifestError(f"{source}: field 'vector_dim' = {dim!r} must be positive for a user-encoder")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestError(f"{source}: field 'vector_table_sha256' = {sha!r} is not a hex sha256")
    return kind, int(dim), str(sha)


def _untrained(raw, num_items: int, source: str) -> tuple[int, ...]:
    """Sorted distinct item ids in 1..num_items."""
    ok = isinstance(raw, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    ok = ok and all(1 <= v <= num_items for v in raw) and all(a < b for a, b in zip(raw, raw[1:]))
    if not ok:
        raise ManifestError(f"{source}: field 'untrained_items' must list distinct item ids in 1..{num_items}, "
                            "ascending")
    return tuple(raw)


def _golden(raw, history_length: int, source: str) -> GoldenExample | None:
    if raw is None:
        return None
    fields = ("history", "candidates", "scores")
    vectors = raw.get("vectors", []) if isinstance(raw, dict) else []
    ok = isinstance(raw, dict) and set(raw) - {"vectors"} == set(fields)
    ok = ok and all(isinstance(raw[f], (list, tuple)) for f in fields) and isinstance(vectors, (list, tuple))
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vectors)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for f in fields[:2] for v in raw[f])
    ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in raw["scores"])
    ok = ok and len(raw["history"]) == history_length and 0 < len(raw["candidates"]) == len(raw["scores"])
    if not ok:
        raise ManifestError(f"{source}: field 'golden' must hold history ({history_length} ids), candidates and "
                            "one finite score per candidate")
    return GoldenExample(tuple(raw["history"]), tuple(raw["candidates"]), tuple(float(v) for v in raw["scores"]),
                         tuple(float(v) for v in vectors))


def _specs(data: dict, name: str, source: str) -> tuple[TensorSpec, ...]:
    raw = data[name]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ManifestError(f"{source}: field '{name}' must be a non-empty list")
    specs = []
    for i, spec in enumerate(raw):
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and isinstance(spec.get("dtype"), str)
            and isinstance(spec.get("shape"), (list, tuple))
            and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec["shape"])
        )
        if not ok:
            raise ManifestError(f"{source}: field '{name}[{i}]' = {spec!r} is not a tensor spec")
        specs.append(TensorSpec(spec["name"], spec["dtype"], tuple(spec["shape"])))
    return tuple(specs)


def write_manifest(manifest: ModelManifest, folder: str | Path) -> Path:
    """Write `folder/manifest.json` atomically (temp file, then rename)."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest_to_dict(manifest), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_manifest(folder: str | Path) -> ModelManifest:
    """Read and validate `folder/manifest.json` (does not check the artifact; see verify_artifact)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return manifest_from_dict(data, source=str(path))


def verify_artifact(folder: str | Path, manifest: ModelManifest | None = None) -> tuple[ModelManifest, Path]:
    """Check the artifact named by the manifest exists with the declared size and sha256."""
    manifest = manifest or read_manifest(folder)
    path = Path(folder) / manifest.file_name
    if not path.is_file():
        raise ManifestError(f"{path}: artifact named by the manifest is missing")
    size = path.stat().st_size
    if size != manifest.size_bytes:
        raise ManifestError(f"{path}: size {size} bytes, manifest says {manifest.size_bytes}")
    actual = sha256_file(path)
    if actual != manifest.sha256:
        raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {manifest.sha256}")
    return manifest, path


def new_version(sha256: str, now: datetime | None = None) -> str:
    """A version string that sorts in creation order: UTC time to the microsecond + sha256 prefix."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{sha256[:8]}"
