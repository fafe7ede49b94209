"""Registry of published device SRM artifacts under a models folder: newest verified version per format."""
from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from shared.errors import LSC4RecError, ManifestError
from shared.files import staged_dir
from shared.manifest import MANIFEST_NAME, read_manifest, sha256_file, verify_artifact
from shared.records import ModelFormat, ModelManifest
from shared.vector_table import VECTOR_TABLE_NAME

from cloud.errors import NotFoundError

log = logging.getLogger("lsc4rec.cloud.registry")


@dataclass(frozen=True)
class Published:
    """One verified artifact: its manifest and the path of its file."""

    manifest: ModelManifest
    path: Path


def publish(artifact_folder: str | Path, models_dir: str | Path) -> Path:
    """Copy an artifact folder (manifest.json + file) into `models_dir` atomically; returns the new folder.

    The copy is verified first, written to a hidden temp sibling, then renamed, so a scanning
    server never sees half a version.
    """
    manifest, path = verify_artifact(artifact_folder)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / f"{manifest.format.value}-{manifest.version}"
    if final.exists():
        raise ManifestError(f"{final}: version {manifest.version} is already published")
    with staged_dir(final) as tmp:
        shutil.copyfile(path, tmp / manifest.file_name)
        shutil.copyfile(Path(artifact_folder) / MANIFEST_NAME, tmp / MANIFEST_NAME)
        if manifest.kind == "user-encoder":  # the table the cloud sends vectors from stays beside the encoder
            if sha256_file(Path(artifact_folder) / VECTOR_TABLE_NAME) != manifest.vector_table_sha256:
                raise ManifestError(f"{Path(artifact_folder) / VECTOR_TABLE_NAME}: sha256 differs from the manifest's "
                                    "vector_table_sha256")
            shutil.copyfile(Path(artifact_folder) / VECTOR_TABLE_NAME, tmp / VECTOR_TABLE_NAME)
        verify_artifact(tmp)
    return final


class ModelRegistry:
    """Scans `models_dir` (each non-hidden subfolder = one artifact folder) on every lookup.

    Each folder is verified (manifest + size + sha256) once, when first seen; a folder that
    fails is refused (logged once) and never served, so the previous version keeps being served.
    """

    def __init__(self, models_dir: str | Path | None):
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self._lock = threading.Lock()
        self._seen: dict[str, Published | None] = {}  # folder name -> verified artifact, None = refused
        self.refused: dict[str, str] = {}  # folder name -> reason

    def scan(self) -> dict[ModelFormat, Published]:
        """Verify new folders and return the newest verified artifact of each format."""
        with self._lock:
            names = self._folder_names()
            for name in names - self._seen.keys():
                self._seen[name] = self._verify(name)
            for gone in self._seen.keys() - names:
                del self._seen[gone]
                self.refused.pop(gone, None)
            newest: dict[tuple[ModelFormat, str], Published] = {}
            for item in self._seen.values():
                if item is None:
                    continue
                key = (item.manifest.format, item.manifest.kind)
                best = newest.get(key)
                if best is None or item.manifest.version > best.manifest.version:
                    newest[key] = item
            return newest

    def latest(self, fmt: ModelFormat, kind: str = "scorer") -> Published:
        """The newest verified artifact of a format and manifest kind (a device updates only within its kind)."""
        found = self.scan().get((fmt, kind or "scorer"))
        if found is None:
            raise NotFoundError(f"format = {fmt.value!r}, kind = {kind or 'scorer'!r}: no such artifact is published")
        return found

    def vector_table(self, version: str) -> tuple[Path, str]:
        """The item vector table published with a user-encoder version and its manifest's sha256 (checked when the
        table is loaded); the encoder may be of either format (ONNX or ExecuTorch)."""
        published = self.find(version)
        if published.manifest.kind != "user-encoder":
            raise NotFoundError(f"version = {version!r}: a {published.manifest.kind}, which has no vector table")
        return published.path.parent / VECTOR_TABLE_NAME, published.manifest.vector_table_sha256

    def find(self, version: str, fmt: ModelFormat | None = None) -> Published:
        """A published, verified artifact by version (it may be older than the newest), of `fmt` if given."""
        self.scan()
        with self._lock:
            for item in self._seen.values():
                if item is not None and item.manifest.version == version and fmt in (None, item.manifest.format):
                    return item
        raise NotFoundError(f"version = {version!r}: no published {'' if fmt is None else fmt.value + ' '}artifact "
                            "has this version")

    def versions(self) -> dict[str, str]:
        """Format -> newest version, for logs."""
        return {fmt.value + ("" if kind == "scorer" else f"/{kind}"): p.manifest.version
                for (fmt, kind), p in self.scan().items()}

    def _folder_names(self) -> set[str]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return set()
        return {e.name for e in os.scandir(self.models_dir) if e.is_dir() and not e.name.startswith(".")}

    def _verify(self, name: str) -> Published | None:
        folder = self.models_dir / name
        try:
            manifest, path = verify_artifact(folder, read_manifest(folder))
        except LSC4RecError as exc:
            self.refused[name] = str(exc)
            log.error("refusing model folder %s: %s", folder, exc)
            return None
        log.info("model %s %s version %s available (%s)", manifest.model_name, manifest.format.value,
                 manifest.version, folder)
        return Published(manifest, path)
