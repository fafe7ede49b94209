"""A tiny text-grounded LLM run and a grown catalogue (its items plus new ones with text), built once per session.

Everything is local and random-weight: a tiny word-level causal LM folder is the text encoder (`folder:PATH`), the
vectors come from `lsc4rec embed items`, the LLM is the `tiny` preset trained for two epochs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.llm.train import load_llm_config, train
from cloud.text import vectors as text_vectors
from shared.data.dataset import Dataset, RawItem, build_dataset, write_dataset
from shared.item_vectors import load_item_vectors, read_meta, read_whitening
from tests.cloud.tiny_lm import tiny_lm_folder
from tests.conftest import synthetic_dataset

NUM_NEW = 3
# a big serving-time bonus for the items no training interaction taught: the new items then lead every list
COLD_BOOST = 30.0


@dataclass(frozen=True)
class World:
    root: Path
    base: Dataset
    grown: Dataset
    base_dir: Path
    grown_dir: Path
    encoder: str  # folder:PATH of the tiny text encoder
    base_vectors: Path  # embed items over the base catalogue (with its whitening)
    grown_vectors: Path  # embed items over the grown catalogue with the base's whitening
    run: Path  # train llm output (text-grounded)

    @property
    def new_ids(self) -> list[int]:
        return list(range(self.base.num_items + 1, self.grown.num_items + 1))


def grown_dataset(base: Dataset, titles: list[str], prefix: str = "new") -> Dataset:
    """`base` with one new item per title appended (raw ids new-1, new-2, ...) and the same interactions."""
    raw = {i.raw_id: RawItem(i.raw_id, i.title, i.year, i.genres) for i in base.items}
    for n, title in enumerate(titles, start=1):
        raw[f"{prefix}-{n}"] = RawItem(f"{prefix}-{n}", title, 2024, ("Drama",))
    events = [(base.users[u - 1], base.items[i - 1].raw_id, int(t)) for u, i, t in base.interactions]
    return build_dataset(events, raw, meta=dict(base.meta))


def build(root: Path, main) -> World:
    """Write the datasets, the encoder, the vectors and the trained run under `root` (`main`: the lsc4rec CLI)."""
    base = synthetic_dataset(num_users=30, num_items=40, min_len=16, max_len=24)
    grown = grown_dataset(base, [f"Item {40 + n}" for n in range(1, NUM_NEW + 1)])
    base_dir, grown_dir = write_dataset(base, root / "base"), write_dataset(grown, root / "grown")
    prompts = [text_vectors.ITEM_PROMPT.format(text=i.text) for i in grown.items]
    encoder = f"folder:{tiny_lm_folder(root / 'lm', prompts)}"
    base_vectors, grown_vectors = root / "base.npz", root / "grown.npz"
    assert main(["embed", "items", "--data", str(base_dir), "--encoder", encoder, "--out", str(base_vectors)]) == 0
    assert main(["embed", "items", "--data", str(grown_dir), "--encoder", encoder, "--out", str(grown_vectors),
                 "--whitening-from", str(base_vectors)]) == 0
    config = load_llm_config("tiny", overrides=["train.threads=1", "model.max_history=10", "train.window_stride=3",
                                                "model.grounding=text", "train.epochs=2",
                                                f"model.cold_boost={COLD_BOOST}"])
    run = root / "run"
    train(base, config, out=run, item_vectors=load_item_vectors(base_vectors, base), progress=False,
          vectors_meta={**read_meta(base_vectors), "path": str(base_vectors)},
          vectors_whitening=read_whitening(base_vectors))
    return World(root, base, grown, base_dir, grown_dir, encoder, base_vectors, grown_vectors, run)


def untrained(folder: Path) -> np.ndarray:
    """Item ids the folder's model counts as untrained (cold_boost applies to them)."""
    with np.load(folder / "item_text.npz") as saved:
        return np.flatnonzero(~saved["trained"]) + 1


def record(folder: Path) -> dict:
    return json.loads((folder / "generator.json").read_text())
