"""Grow a text-grounded cloud LM to a catalogue with new items and publish it as a generator version
(`lsc4rec cloud publish-llm`), without retraining.

A text-grounded model's item token is proj(text vector) + an id residual, and an item no training interaction
taught has a zero residual (cloud/llm/grounding.py). A new item is exactly such an item: its token row is
proj(its text vector), the rows of the existing items stay as they are (bit for bit), and it counts as untrained,
so the serving-time `cold_boost` applies to it. Its vector must come from the encoder, prompt and whitening the
model's vectors came from, or it would not be in the space the projection learned: `--encoder` embeds the new items
that way (through the VectorCache), `--vectors` must hold the old items' vectors unchanged (`lsc4rec embed items
--whitening-from RUN/item_text.npz` keeps the whitening).

Everything is checked before anything is written; bad input raises a DataFormatError naming the file, the field and
the first offending item (exit code 2 on the command line).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cloud.generator_versions import FOLDER_PREFIX, write_record
from cloud.llm.semantic_ids import INDEX_NAME, ItemIndex, atomic_index
from cloud.llm.store import CONFIG_NAME, GROUNDING_NAME, METRICS_NAME, MODEL_DIR
from shared.data.catalog import CatalogRef, check_extends, read_raw_ids, write_raw_ids
from shared.data.dataset import ITEMS, Dataset
from shared.errors import DataFormatError, InvalidArgumentError
from shared.files import staged_dir
from shared.item_vectors import read_item_vectors, read_whitening
from shared.manifest import new_version
from shared.records import Item

SAME_VECTOR_ATOL = 1e-4  # old items' vectors in a --vectors file vs the model's: float32 rounding, not a new whitening


@dataclass(frozen=True)
class Source:
    """A text-grounded LLM folder to grow: its config, catalogue and grounding (text vectors, projection, trained)."""

    folder: Path
    config: dict
    catalog: CatalogRef
    vectors: np.ndarray  # (M, d) the text vectors the model was trained with
    proj: np.ndarray  # (d, H)
    trained: np.ndarray  # (M,) bool
    meta: dict  # what made the vectors (encoder, weights sha256, pooling, prompt, whiten ...)
    whitening: dict  # {"mean", "whitening"} or {} (not whitened, or not recorded)

    @property
    def version(self) -> str:
        return str(self.config.get("version", ""))


def read_source(folder: str | Path) -> Source:
    """The growable parts of a `train llm` output or a published version; refuses an id-only or semantic-id model."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise DataFormatError(config_path, 0, "-", "missing; --llm must be a folder written by `lsc4rec train llm` "
                                                   "or `lsc4rec cloud publish-llm`")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(config_path, 0, "-", f"not valid JSON ({exc})") from None
    grounding = folder / GROUNDING_NAME
    if not grounding.is_file():
        raise DataFormatError(grounding, 0, "-", "missing: an id-only generator cannot embed new items (it has no "
                                                 "text grounding); train a text-grounded one (--preset compact-text "
                                                 "--vectors F)")
    index = ItemIndex.load(folder)
    if index.kind != "atomic":
        raise DataFormatError(folder / INDEX_NAME, 0, "kind", f"{index.kind!r}: only atomic item tokens can grow")
    vectors, proj, trained, meta = _read_grounding(grounding)
    if len(vectors) != index.num_items or len(trained) != index.num_items:
        raise DataFormatError(grounding, 0, "vectors", f"{len(vectors)} rows, the item index has {index.num_items}")
    catalog = CatalogRef(index.catalog_hash, index.num_items, read_raw_ids(folder))
    return Source(folder, config, catalog, vectors, proj, trained, meta, _whitening(grounding, meta, catalog))


def _read_grounding(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(vectors (M, d), proj (d, H), trained (M,), meta) of an item_text.npz; DataFormatError naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            missing = [k for k in ("vectors", "proj", "trained") if k not in saved.files]
            if missing:
                raise DataFormatError(path, 0, missing[0], "array missing")
            vectors, proj, trained = saved["vectors"], saved["proj"], saved["trained"].astype(bool)
            meta = json.loads(str(saved["meta"])) if "meta" in saved.files else {}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # (json's error is a ValueError too)
        raise DataFormatError(path, 0, "-", f"not a readable item_text.npz ({exc})") from None
    if vectors.ndim != 2 or proj.ndim != 2 or vectors.shape[1] != proj.shape[0]:
        raise DataFormatError(path, 0, "proj", f"shape {proj.shape} does not take vectors of shape {vectors.shape}")
    return vectors, proj, trained, meta


def _whitening(grounding: Path, meta: dict, catalog: CatalogRef) -> dict:
    """The whitening of the model's vectors: kept in item_text.npz, else (older runs) in the vectors file it names,
    when that file is still there and is of this catalogue."""
    kept = read_whitening(grounding)
    if kept or not meta.get("path"):
        return kept
    path = Path(meta["path"])
    try:
        _, file_meta = read_item_vectors(path)
    except DataFormatError:
        return {}
    return read_whitening(path) if file_meta.get("vocab_hash") == catalog.vocab_hash else {}


def check_new_texts(items: Sequence[Item], path: Path) -> None:
    """Every new item needs text: the model knows it only by its text vector."""
    for item in items:
        title = item.title.strip()
        if not title or title == f"item {item.raw_id}":  # the reader's placeholder for a missing title
            raise DataFormatError(path, item.id + 1, "title", f"new item {item.id} ({item.raw_id!r}) has no text "
                                                              f"({item.title!r}): a new item is known only by its text")


def vectors_from_file(path: str | Path, dataset: Dataset, source: Source, items_path: Path | str = "--data") -> np.ndarray:
    """(K, d) vectors of the new items from a vectors file of the whole grown catalogue, refused unless it is of this
    catalogue, has the projection's width and holds the old items' vectors as the model was trained with them."""
    path = Path(path)
    vectors, meta = read_item_vectors(path)
    if meta.get("vocab_hash") != dataset.vocab_hash:
        raise DataFormatError(path, 0, "meta.vocab_hash", f"{meta.get('vocab_hash')!r}, but the catalogue "
                                                          f"{items_path} has vocab hash {dataset.vocab_hash!r}: vectors "
                                                          "of another catalogue (ids would not match)")
    if vectors.ndim != 2 or len(vectors) != dataset.num_items or meta.get("num_items") != dataset.num_items:
        raise DataFormatError(path, 0, "vectors", f"shape {vectors.shape} (meta.num_items {meta.get('num_items')}), "
                                                  f"expected {dataset.num_items} rows, one per item")
    if vectors.shape[1] != source.proj.shape[0]:
        raise DataFormatError(path, 0, "vectors", f"{vectors.shape[1]} columns, the generator's projection takes "
                                                  f"{source.proj.shape[0]}")
    if not np.isfinite(vectors).all():
        raise DataFormatError(path, 0, "vectors", "holds NaN or infinite values")
    old = np.asarray(vectors[:source.catalog.num_items], dtype=np.float32)
    diff = np.abs(old - source.vectors).max(axis=1)
    moved = np.flatnonzero(diff > SAME_VECTOR_ATOL)
    if moved.size:
        n = int(moved[0]) + 1
        raise DataFormatError(path, 0, "vectors", f"row of item {n} differs from the vector {source.folder} was "
                                                  f"trained with (max |diff| {diff[moved[0]]:.3g}): made with another "
                                                  "encoder, prompt or whitening; embed with `lsc4rec embed items "
                                                  f"--whitening-from {source.folder / GROUNDING_NAME}`, or use "
                                                  "--encoder")
    return np.asarray(vectors[source.catalog.num_items:], dtype=np.float32)


def vectors_from_encoder(spec: str, items: Sequence[Item], source: Source, batch_size: int = 16) -> np.ndarray:
    """(K, d) vectors of the new items, embedded as the model's were: the same encoder weights, pooling and prompt,
    through the VectorCache (a text embedded before costs nothing), then the model's whitening."""
    from cloud.text.encoders import resolve_encoder
    from cloud.text.vectors import apply_whitening, encode

    grounding = source.folder / GROUNDING_NAME
    meta = source.meta
    for key in ("weights_sha256", "pooling", "prompt"):
        if key not in meta:
            raise DataFormatError(grounding, 0, f"meta.{key}", "missing: the model does not record how its vectors "
                                                               "were made; pass --vectors instead of --encoder")
    encoder = resolve_encoder(spec)
    if encoder.weights_sha256 != meta["weights_sha256"]:
        raise InvalidArgumentError("--encoder", spec, f"weights sha256 {encoder.weights_sha256[:12]}..., but the "
                                                      f"model's vectors were made by {meta.get('encoder', '?')} "
                                                      f"({meta['weights_sha256'][:12]}...; {grounding})")
    whiten = meta.get("whiten", False)
    if whiten and not source.whitening:
        raise DataFormatError(grounding, 0, "whitening", "missing (and the vectors file its meta names is gone): new "
                                                         "items cannot be whitened like the old ones; pass --vectors")
    if not items:
        return np.zeros((0, source.proj.shape[0]), dtype=np.float32)
    raw = encode([item.text for item in items], encoder, meta["pooling"], meta["prompt"], batch_size)
    mean, w = (source.whitening["mean"], source.whitening["whitening"]) if whiten else (None, None)
    if mean is not None and mean.shape[0] != raw.shape[1]:
        raise DataFormatError(grounding, 0, "whitening", f"takes {mean.shape[0]} dimensions, the encoder gives "
                                                         f"{raw.shape[1]}")
    vectors = apply_whitening(raw, mean, w)
    if vectors.shape[1] != source.proj.shape[0]:
        raise DataFormatError(grounding, 0, "proj", f"takes {source.proj.shape[0]} dimensions, the new vectors have "
                                                    f"{vectors.shape[1]}")
    return vectors


def grow_token_table(model, rows: np.ndarray) -> None:
    """Append `rows` (K, H) to the model's token table (tied output head included); existing rows are unchanged."""
    import torch

    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if not len(rows):
        return
    model.resize_token_embeddings(old + len(rows), mean_resizing=False)
    new = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    with torch.no_grad():
        emb = model.get_input_embeddings()
        emb.weight[old:] = new.to(emb.weight.dtype)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.weight.data_ptr():
            head.weight[old:] = new.to(head.weight.dtype)


def publish_grown(source: Source, dataset: Dataset, new_vectors: np.ndarray, generators: str | Path,
                  data_path: Path | None = None) -> Path:
    """Write the grown generator as a new version folder `generators/llm-<version>/` (staged, then renamed)."""
    from transformers import AutoModelForCausalLM

    base = source.catalog.num_items
    model = AutoModelForCausalLM.from_pretrained(source.folder / MODEL_DIR, local_files_only=True)
    new_rows = new_vectors @ source.proj  # (K, H): what an untrained item's token is (zero residual)
    grow_token_table(model, new_rows)
    index = atomic_index(dataset.items)
    if model.get_input_embeddings().weight.shape[0] != index.vocab_size:
        raise DataFormatError(source.folder / MODEL_DIR, 0, "vocab_size", f"{model.get_input_embeddings().weight.shape[0]}"
                                                                          f" tokens after growing, the index needs "
                                                                          f"{index.vocab_size}")
    digest = hashlib.sha256(source.version.encode() + dataset.vocab_hash.encode() + new_rows.tobytes())
    version = new_version(digest.hexdigest())
    catalog = CatalogRef.of(dataset.items)
    grown_from = {"version": source.version, "vocab_hash": source.catalog.vocab_hash, "num_items": base,
                  "folder": str(source.folder)}
    config = {**source.config, "version": version, "vocab_hash": catalog.vocab_hash, "num_items": catalog.num_items,
              "grown_from": grown_from}
    from cloud.llm.grounding import save_grounding  # torch (imported above by transformers anyway)

    final = Path(generators) / f"{FOLDER_PREFIX}{version}"
    with staged_dir(final) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        index.save(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        metrics = source.folder / METRICS_NAME
        if metrics.is_file():  # the figures of the trained catalogue
            (tmp / METRICS_NAME).write_bytes(metrics.read_bytes())
        save_grounding(tmp, np.concatenate([source.vectors, new_vectors]), source.proj,
                       np.concatenate([source.trained, np.zeros(len(new_vectors), dtype=bool)]),
                       {**source.meta, "grown_from": grown_from}, source.whitening)
        write_raw_ids(tmp, dataset.items)
        write_record(tmp, version, catalog, grown_from=grown_from, new_items=catalog.num_items - base,
                     data=str(data_path) if data_path is not None else "")
    return final


def publish(llm: str | Path, data: str | Path, generators: str | Path, vectors: str | Path | None = None,
            encoder: str | None = None, batch_size: int = 16) -> tuple[Path, int]:
    """`lsc4rec cloud publish-llm`: check everything, then write the version; returns (folder, new items)."""
    from shared.data.dataset import load_dataset

    if (vectors is None) == (encoder is None):
        raise InvalidArgumentError("--vectors/--encoder", None, "give exactly one")
    source = read_source(llm)
    data = Path(data)
    dataset = load_dataset(data)
    added = check_extends(source.catalog, dataset.items, data / ITEMS)
    new_items = dataset.items[source.catalog.num_items:]
    check_new_texts(new_items, data / ITEMS)
    new_vectors = (vectors_from_file(vectors, dataset, source, data / ITEMS) if vectors is not None
                   else vectors_from_encoder(encoder, new_items, source, batch_size))
    return publish_grown(source, dataset, new_vectors, generators, data), added
