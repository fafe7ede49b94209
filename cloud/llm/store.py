"""Save and load a trained cloud LM folder: HF model + item index + resolved config + metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cloud.llm.generate import LLMGenerator
from cloud.llm.semantic_ids import NUM_SPECIAL, ItemIndex
from shared.config import to_dict
from shared.data.catalog import write_raw_ids
from shared.errors import ManifestError
from shared.manifest import new_version, sha256_file
from shared.records import Item

MODEL_DIR = "model"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
GROUNDING_NAME = "item_text.npz"  # text-grounded models: see cloud.llm.grounding


def save_run(out: str | Path, model, index: ItemIndex, config, metrics: dict, token_bias=None,
             items: Sequence[Item] | None = None):
    """Write `out/model` (save_pretrained), `out/item_index.json`, `out/config.json`, `out/metrics.json`, and with
    `items` `out/catalogue.txt` (their raw ids: a grown catalogue is then checked item by item, and a refusal names
    the first item that moved)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / MODEL_DIR)
    index.save(out)
    if items is not None:
        write_raw_ids(out, items)
    weights = sorted((out / MODEL_DIR).glob("*.safetensors"))
    version = new_version(sha256_file(weights[0]) if weights else "0" * 64)
    resolved = {"version": version, "vocab_hash": index.catalog_hash, "num_items": index.num_items,
                **to_dict(config)}
    (out / CONFIG_NAME).write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return LLMGenerator(model, index, config.model.max_history, version=version, token_bias=token_bias)


def catalog_items(dataset_or_catalog) -> Sequence[Item]:
    """The catalogue's items from a Dataset or a sequence of Item."""
    items = getattr(dataset_or_catalog, "items", dataset_or_catalog)
    return tuple(items)


def load_generator(folder: str | Path, dataset_or_catalog, beam_width: int = 0, batch_size: int = 64,
                   threads: int | None = None, cold_boost: float | None = None):
    """An LLMGenerator from a trained folder; CatalogMismatchError if its index is for another catalogue.

    A text-grounded folder gives the items no training interaction taught a log-probability bonus of `cold_boost`
    (default: the folder's model.cold_boost).
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise ManifestError(f"{folder}: no {CONFIG_NAME}; not a folder written by `lsc4rec train llm`")
    index = ItemIndex.load(folder)
    index.check_catalog(catalog_items(dataset_or_catalog), f"{folder}/item_index.json")
    config = json.loads((folder / CONFIG_NAME).read_text())
    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(folder / MODEL_DIR, local_files_only=True)
    boost = config["model"].get("cold_boost", 0.0) if cold_boost is None else cold_boost
    return LLMGenerator(model, index, config["model"]["max_history"], version=config["version"],
                        beam_width=beam_width, batch_size=batch_size, token_bias=_cold_bias(folder, index, boost))


def cold_bias(trained: np.ndarray, vocab_size: int, boost: float) -> np.ndarray | None:
    """(V,) log-probability bonus `boost` on the tokens of the untrained items (None when there is nothing to add)."""
    if not boost or np.all(trained):
        return None
    bias = np.zeros(vocab_size, dtype=np.float32)
    bias[NUM_SPECIAL:][~np.asarray(trained, dtype=bool)] = boost
    return bias


def _cold_bias(folder: Path, index: ItemIndex, boost: float):
    """(V,) `boost` on the tokens of the items a text-grounded model never trained on; None without grounding."""
    path = folder / GROUNDING_NAME
    if not path.is_file():
        return None
    with np.load(path) as saved:
        return cold_bias(saved["trained"], index.vocab_size, boost)
