"""Generator versions in a folder (`lsc4rec cloud publish-llm` writes them, `cloud serve --generators` serves them),
and the watcher that switches the running server to a newly published one.

A version is a folder `GEN_DIR/llm-<version>/`: a loadable LLM folder (model/, item_index.json, config.json,
item_text.npz) plus `catalogue.txt` (the raw ids it serves, in id order) and `generator.json` (version, vocab hash,
item count, what it was grown from, and the sha256 of every file). It appears whole (staged, then renamed).

The watcher scans the folder every `poll_s` seconds. A folder is read once, when first seen: it is verified (record,
file hashes, catalogue), its catalogue must extend the one being served (request histories hold the old ids, so they
must keep naming the same items), then the generator is loaded and warmed up in the watcher's thread (off the serving
path) and swapped in with `CloudServer.set_generator`. A folder that fails is refused with one log line naming it and
the reason, and is not read again; the last good generator keeps serving.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.data.catalog import RAW_IDS_NAME, CatalogRef, check_extends, raw_vocab_hash, read_raw_ids
from shared.errors import ConfigError, LSC4RecError, ManifestError
from shared.manifest import sha256_file

log = logging.getLogger("lsc4rec.cloud.generators")

RECORD_NAME = "generator.json"
RECORD_FORMAT = 1
FOLDER_PREFIX = "llm-"


@dataclass(frozen=True)
class GeneratorVersion:
    """One verified version folder: its version id (sorts in creation order) and the catalogue it serves."""

    folder: Path
    version: str
    catalog: CatalogRef  # raw ids included
    record: dict


def write_record(folder: str | Path, version: str, catalog: CatalogRef, **fields) -> Path:
    """`folder/generator.json`, written last: the version, the catalogue and the sha256 of every other file, so a
    reader can tell a complete, intact folder from a damaged one before it loads anything."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD_NAME}
    record = {"format": RECORD_FORMAT, "version": version, "vocab_hash": catalog.vocab_hash,
              "num_items": catalog.num_items, **fields, "files": files}
    path = folder / RECORD_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_version(folder: str | Path) -> GeneratorVersion:
    """Verify a version folder (record, every file's size and sha256, catalogue); ManifestError names the file and
    the field that is wrong."""
    folder = Path(folder)
    path = folder / RECORD_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: missing; not a folder written by `lsc4rec cloud publish-llm`")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ManifestError(f"{path}: field 'format' = {record.get('format') if isinstance(record, dict) else None!r}, "
                            f"expected {RECORD_FORMAT}")
    for key, kind in (("version", str), ("vocab_hash", str), ("num_items", int), ("files", dict)):
        if not isinstance(record.get(key), kind):
            raise ManifestError(f"{path}: field '{key}' = {record.get(key)!r}: missing or not a {kind.__name__}")
    _check_files(folder, record["files"])
    raw_ids = read_raw_ids(folder)
    catalog = CatalogRef(record["vocab_hash"], record["num_items"], raw_ids)
    if raw_ids is None or len(raw_ids) != catalog.num_items or raw_vocab_hash(raw_ids) != catalog.vocab_hash:
        raise ManifestError(f"{folder / RAW_IDS_NAME}: does not hold the {catalog.num_items} items of vocab hash "
                            f"{catalog.vocab_hash} that {RECORD_NAME} names")
    return GeneratorVersion(folder, record["version"], catalog, record)


def _check_files(folder: Path, files: dict) -> None:
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{path}: missing (listed in {RECORD_NAME})")
        if path.stat().st_size != expected.get("size"):
            raise ManifestError(f"{path}: size {path.stat().st_size}, {RECORD_NAME} field 'files' says "
                                f"{expected.get('size')}")
        actual = sha256_file(path)
        if actual != expected.get("sha256"):
            raise ManifestError(f"{path}: sha256 {actual} does not match {RECORD_NAME} field 'files' "
                                f"({expected.get('sha256')})")


def load_version(version: GeneratorVersion, threads: int = 0):
    """The LLMGenerator of a verified version folder (torch is imported here)."""
    from cloud.llm.store import load_generator

    return load_generator(version.folder, version.catalog.items(), threads=threads or None)


def version_folders(root: str | Path) -> dict[str, Path]:
    """Folder name -> path of the candidate versions under `root` (hidden ones are still being staged)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {e.name: Path(e.path) for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}


Loader = Callable[[GeneratorVersion], object]


class GeneratorWatcher:
    """Serves the newest valid version of `root` on `server` and switches to newer ones as they are published.

    `base`: the catalogue the first served version must extend (the server's --data); afterwards each new version
    must extend the one being served. `load(version) -> generator` is replaceable (tests).
    """

    def __init__(self, server, root: str | Path, base: CatalogRef, poll_s: float = 5.0, threads: int = 0,
                 load: Loader | None = None):
        self.server, self.root, self.poll_s = server, Path(root), float(poll_s)
        self._load = load or (lambda version: load_version(version, threads))
        self.catalog = base  # what the next version must extend: the served one's catalogue once one serves
        self.current: GeneratorVersion | None = None
        self.refused: dict[str, str] = {}  # folder name -> reason (never read again while the folder stays)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GeneratorVersion:
        """Serve the newest valid version now (ConfigError if there is none), then poll in a thread (poll_s > 0)."""
        served = self.poll()
        if served is None:
            reasons = "; ".join(f"{name}: {why}" for name, why in sorted(self.refused.items())) or "it holds none"
            raise ConfigError("--generators", str(self.root), f"no valid generator version ({reasons})")
        if self.poll_s > 0:
            self._thread = threading.Thread(target=self._run, name="generator-watch", daemon=True)
            self._thread.start()
        return served

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a bug here must not end the watching; the generator keeps serving
                log.exception("generator watch: scanning %s failed", self.root)

    def poll(self) -> GeneratorVersion | None:
        """One scan: switch to the newest new valid version newer than the served one; returns it (None: no switch)."""
        with self._lock:
            folders = version_folders(self.root)
            for gone in self._seen - folders.keys():  # a folder deleted (and maybe written again) is read afresh
                self._seen.discard(gone)
                self.refused.pop(gone, None)
            fresh = {name: path for name, path in folders.items() if name not in self._seen}
            self._seen.update(fresh)
            for version in self._newest_first(fresh):
                if self._stop.is_set():
                    return None
                if self._switch(version):
                    return version
            return None

    def _newest_first(self, fresh: dict[str, Path]) -> list[GeneratorVersion]:
        """The verified new versions newer than the served one, newest first; the others are refused or skipped."""
        found = []
        for name, path in fresh.items():
            try:
                found.append(read_version(path))
            except LSC4RecError as exc:
                self._refuse(name, path, str(exc))
        newer = [v for v in found if self.current is None or v.version > self.current.version]
        for skipped in (v for v in found if v not in newer):
            log.info("generator folder %s: version %s is not newer than the served %s; not loaded", skipped.folder,
                     skipped.version, self.current.version)
        return sorted(newer, key=lambda v: v.version, reverse=True)

    def _switch(self, version: GeneratorVersion) -> bool:
        """Check, load, warm and swap one version in; False (refused, logged) when any step fails."""
        name = version.folder.name
        try:
            check_extends(self.catalog, version.catalog.raw_ids, version.folder / RAW_IDS_NAME)
            generator = self._load(version)
            if generator.num_items != version.catalog.num_items:
                raise ManifestError(f"{version.folder}: the generator has {generator.num_items} items, "
                                    f"{RECORD_NAME} field 'num_items' says {version.catalog.num_items}")
            self.server.set_generator(generator, version.catalog)  # warms it up first: a broken one raises here
        except Exception as exc:  # noqa: BLE001 - any failure refuses this folder; the served generator stays
            self._refuse(name, version.folder, f"{type(exc).__name__}: {exc}" if not isinstance(exc, LSC4RecError)
                         else str(exc))
            return False
        self.current, self.catalog = version, version.catalog
        return True

    def _refuse(self, name: str, folder: Path, reason: str) -> None:
        self.refused[name] = reason
        log.error("refusing generator folder %s: %s", folder, reason)
        self.server.metrics.count_generator_switch("refused")
