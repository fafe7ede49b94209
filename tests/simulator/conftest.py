"""Fixtures of the simulator tests: a tiny synthetic dataset on disk and a small config."""
from __future__ import annotations

import pytest

from shared.data.dataset import write_dataset
from tests.conftest import synthetic_dataset


@pytest.fixture
def tiny_dir(tmp_path):
    folder = tmp_path / "data"
    write_dataset(synthetic_dataset(num_users=30, num_items=60, min_len=16, max_len=28, seed=3), folder)
    return folder


def small_overrides(data_dir, *extra: str) -> list[str]:
    """A small grid over the tiny dataset: N = 20, K = 5, S = 6, one seed, no rows on disk unless asked."""
    return [f'data="{data_dir}"', "num_candidates=20", "slate_size=5", "stream_length=6", "cloud_lag=2",
            "seeds=[0]", "budgets=[0.2, 0.5]", *extra]
