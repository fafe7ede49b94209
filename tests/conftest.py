"""Shared fixtures: tiny seeded synthetic datasets; the real ML-100K only for `slow` tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.data.dataset import Dataset, RawItem, build_dataset

REPO = Path(__file__).resolve().parent.parent


def synthetic_dataset(num_users: int = 40, num_items: int = 60, min_len: int = 16, max_len: int = 30,
                      seed: int = 0) -> Dataset:
    """Users walk a ring of items with noise, so sequence models have something to learn."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(1, num_users + 1):
        length = int(rng.integers(min_len, max_len + 1))
        item = int(rng.integers(1, num_items + 1))
        for t in range(length):
            events.append((str(user), str(item), 1_000_000 + 100 * t + user))
            step = 1 if rng.random() < 0.7 else int(rng.integers(2, 6))
            item = (item - 1 + step) % num_items + 1
    items = {str(i): RawItem(str(i), f"Item {i}", 1990 + i % 20, ("Drama",) if i % 2 else ("Comedy",))
             for i in range(1, num_items + 1)}
    return build_dataset(events, items, meta={"source": "synthetic"})


@pytest.fixture
def tiny_dataset() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> Path:
    """Real ML-100K prepared once per session (fetches the RecBole wheel from PyPI)."""
    from shared.data.prepare import prepare

    cached = REPO / "data" / "ml-100k"
    if (cached / "meta.json").is_file():
        return cached
    out = tmp_path_factory.mktemp("data") / "ml-100k"
    prepare("ml-100k", out)
    return out
