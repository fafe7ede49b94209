"""Item vector files (.npz): `vectors` (N, d) float, row i-1 = item i, and `meta`, a JSON string naming the catalogue.

`lsc4rec embed items` writes them (save_item_vectors); baselines read them (load_item_vectors), checked against the
dataset's catalogue so that vectors of another catalogue are never used by row number.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from shared.data.dataset import Dataset
from shared.errors import CatalogMismatchError, DataFormatError, InvalidArgumentError
from shared.files import write_atomic

REQUIRED_META = ("vocab_hash", "num_items")


def save_item_vectors(path: str | Path, vectors: np.ndarray, meta: dict, **extra: np.ndarray) -> Path:
    """Write `vectors` (N, d), `meta` (needs vocab_hash and num_items = N) and any `extra` arrays (e.g. the
    whitening that new items need) atomically (shared.files.write_atomic)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise InvalidArgumentError("vectors", f"{vectors.dtype} {vectors.shape}", "must be a 2-d float array (N, d)")
    for key in REQUIRED_META:
        if key not in meta:
            raise InvalidArgumentError(f"meta.{key}", None, "required")
    if int(meta["num_items"]) != len(vectors):
        raise InvalidArgumentError("meta.num_items", meta["num_items"], f"but vectors has {len(vectors)} rows")
    path = Path(path)
    # a handle: np.savez would append .npz to a name
    write_atomic(path, lambda handle: np.savez(handle, vectors=vectors, meta=np.asarray(json.dumps(meta, sort_keys=True)),
                                               **extra))
    return path


def _read(path: Path) -> tuple[np.ndarray, dict]:
    """The raw (vectors, meta) of a file; DataFormatError naming the file and field when it is not one."""
    if not path.is_file():
        raise DataFormatError(path, 0, "-", "missing; write it with `lsc4rec embed items`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("vectors", "meta") if k not in npz.files]
            if missing:
                raise DataFormatError(path, 0, missing[0], "array missing")
            vectors, meta_text = npz["vectors"], str(npz["meta"])
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataFormatError(path, 0, "-", f"not a NumPy .npz file ({exc})") from None
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, 0, "meta", f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataFormatError(path, 0, "meta", "must be a JSON object")
    return vectors, meta


def load_item_vectors(path: str | Path, dataset: Dataset) -> np.ndarray:
    """(N, d) float32 vectors of `dataset`'s items; refuses a missing or malformed file (DataFormatError) and
    vectors made for another catalogue (CatalogMismatchError)."""
    return read_catalogue_vectors(path, dataset.vocab_hash, dataset.num_items)[0]


def read_catalogue_vectors(path: str | Path, vocab_hash: str, num_items: int) -> tuple[np.ndarray, dict]:
    """(vectors (N, d) float32, meta) of the catalogue named by `vocab_hash` and its `num_items`, checked as
    `load_item_vectors` checks them (for callers that know the catalogue from a model, not a dataset)."""
    path = Path(path)
    vectors, meta = _read(path)
    for key in REQUIRED_META:
        if key not in meta:
            raise DataFormatError(path, 0, f"meta.{key}", "missing")
    if meta["vocab_hash"] != vocab_hash:
        raise CatalogMismatchError(str(path), vocab_hash, str(meta["vocab_hash"]))
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise DataFormatError(path, 0, "vectors", f"{vectors.dtype} array of shape {vectors.shape}, expected (N, d)")
    if len(vectors) != num_items or int(meta["num_items"]) != num_items:
        raise DataFormatError(path, 0, "vectors", f"{len(vectors)} rows (meta.num_items {meta['num_items']}), "
                                                  f"expected {num_items}")
    if not np.isfinite(vectors).all():
        raise DataFormatError(path, 0, "vectors", "holds NaN or infinite values")
    return vectors.astype(np.float32), meta


def read_item_vectors(path: str | Path) -> tuple[np.ndarray, dict]:
    """(vectors, meta) of a vectors file, unchecked against any catalogue (DataFormatError if it is not one); for
    callers that check the catalogue themselves (a grown catalogue is checked against a model's, not a dataset's)."""
    return _read(Path(path))


WHITENING_KEYS = ("mean", "whitening")


def read_whitening(path: str | Path) -> dict[str, np.ndarray]:
    """The whitening a vectors file was made with ({"mean": (d,), "whitening": (d, k)}), {} when it has none: new
    items must be whitened the same way to land in the space the old vectors are in."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz.files for k in WHITENING_KEYS):
                return {}
            return {k: np.asarray(npz[k], dtype=np.float32) for k in WHITENING_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataFormatError(path, 0, "-", f"not a NumPy .npz file ({exc})") from None


def read_meta(path: str | Path) -> dict:
    """The `meta` of a vectors file (which encoder, pooling and prompt made it), for the records of what used it."""
    return _read(Path(path))[1]
