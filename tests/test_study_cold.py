"""benchmarks.study_cold: pooling the draws' per-example ranks and pairing the models on the same examples."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.study_cold import markdown, pooled


def _write(folder, name, ranks, slices):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", ranks=np.asarray(ranks), slice=np.asarray(slices))


def test_draws_are_pooled_and_models_paired_on_the_same_examples(tmp_path):
    args = argparse.Namespace(out=tmp_path, models=["llm-text", "llm-id"], protocol="cold", data="D", vectors="V")
    # draw 0: two cold targets (text finds one at rank 0), one warm; draw 1: one cold (text at rank 30), one warm
    _write(tmp_path / "s0", "llm-text", [0, -1, 3], ["cold", "cold", "warm"])
    _write(tmp_path / "s0", "llm-id", [-1, -1, 0], ["cold", "cold", "warm"])
    _write(tmp_path / "s1", "llm-text", [30, 1], ["cold", "warm"])
    _write(tmp_path / "s1", "llm-id", [-1, 1], ["cold", "warm"])
    table, pairs = pooled(args, [0, 1])
    assert table[("llm-text", "cold")] == pytest.approx({"hr@10": 1 / 3, "ndcg@10": 1 / 3, "recall@50": 2 / 3,
                                                          "examples": 3})
    assert table[("llm-id", "warm")]["ndcg@10"] == pytest.approx((1.0 + 1 / np.log2(3)) / 2)
    cold_hr = next(p for p in pairs if p["slice"] == "cold" and p["metric"] == "hr@10")
    assert (cold_hr["a"], cold_hr["b"]) == ("llm-text", "llm-id") and cold_hr["diff"] == pytest.approx(1 / 3)
    text = markdown(table, pairs, args, [0, 1])
    assert "| llm-text − llm-id | cold | hr@10 | +0.3333 |" in text and "cold 3, tail 0, warm 2, all 5" in text
