"""benchmarks.common: the timing helpers the speed figures rest on."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import best_round_p50_us, percentiles_us, time_interleaved


def test_time_interleaved_gives_every_fn_its_calls_in_turns():
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    out = time_interleaved(fns, repeat=6, rounds=3, warmup=0)
    assert order == ["a", "a", "b", "b"] * 3
    assert all(len(out[n]["wall"]) == len(out[n]["cpu"]) == 6 for n in fns)


def test_best_round_p50_is_the_median_of_the_fastest_block():
    # 4 blocks of 5 samples (seconds) with medians 3, 1, 4, 2 ms: the fastest block's median is 1 ms
    blocks = [[1, 2, 3, 9, 9], [0, 1, 1, 2, 50], [4, 4, 4, 5, 5], [1, 2, 2, 2, 3]]
    samples = [ms / 1000 for block in blocks for ms in block]
    assert best_round_p50_us(samples, rounds=4) == pytest.approx(1000.0)
    assert best_round_p50_us(samples, rounds=4) <= percentiles_us(samples)["p50_us"]
    assert best_round_p50_us(np.full(7, 2e-6), rounds=20) == pytest.approx(2.0)  # fewer samples than rounds
