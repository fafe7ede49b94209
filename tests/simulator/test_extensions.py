"""Adding an extension is one file: a toy of each kind, registered from a test module, runs end to end through the
simulator (in-process) and its effect shows in the simulation's metrics.

Where each extension point lives (CONTRIBUTING.md, "The extension points"), and the test that runs its toy:

- an on-device model (SRM), `device/training/models/<name>.py` (`MODELS`): `RingStep` below, trained with
  `lsc4rec train srm`, exported with `lsc4rec export srm` and named by `srm = EXPORT` in the simulation;
- a cloud generator, `cloud/generators/<name>.py` (`shared.generator.GENERATORS`): `Ahead` below, named by
  `llm = "toy:STEP"` in the simulation (served over gRPC instead: tests/cloud/test_generators.py);
- a request policy, `device/runtime/policies/<name>.py` (`POLICIES`): the toy `_NthEvent` in
  tests/simulator/test_engine.py (test_a_policy_registered_in_a_test_runs_end_to_end_through_the_simulator).

The data is the simulator tests' tiny synthetic ring walk (tests/simulator/conftest.py: after item i most users
go on to i + 1, the others 2 to 5 items further), which both toys know how to exploit.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from device.training.artifacts import load_checkpoint
from device.training.models import MODELS
from device.training.models.common import SequentialRecommender
from shared.generator import GENERATORS, check_generate_args
from shared.manifest import read_manifest
from shared.metrics import ndcg
from shared.records import Candidate
from simulator.cli import main
from simulator.config import load_sim_config
from simulator.experiments import load_world
from simulator.figures import device_only_ranks
from simulator.run import simulate
from tests.simulator.conftest import small_overrides

# ---- a toy SRM ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingStepConfig:
    num_items: int = 1  # ids 1..N, 0 = padding
    max_len: int = 4  # the exported history length (only the last item is read)


class RingStep(SequentialRecommender):
    """Scores a candidate by how far it lies ahead of the history's last item on the item ring: one learned
    score per distance 0..N-1 (distance 0 = the next item)."""

    config_class = RingStepConfig

    def __init__(self, config: RingStepConfig):
        super().__init__()
        self.config, self.num_items, self.max_len = config, config.num_items, config.max_len
        self.by_distance = nn.Embedding(config.num_items, 1)
        nn.init.zeros_(self.by_distance.weight)
        self.history_bias = None

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """history (B, T), candidates (B, C), int64, 0 = padding -> (B, C) scores."""
        distance = candidates - history[:, -1:] - 1  # in -N..N-1
        distance = torch.where(distance < 0, distance + self.num_items, distance)
        return self.by_distance(distance).squeeze(-1)


class RingStepTwin:
    """The trained toy's ranking in numpy, from its checkpoint's weights (not through the export)."""

    def __init__(self, weights: np.ndarray, history_length: int):
        self.weights, self.history_length = weights, history_length

    def score(self, histories: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.weights[(candidates - histories[:, -1:] - 1) % len(self.weights)]


def test_a_toy_srm_trains_exports_and_ranks_on_the_simulated_devices(tiny_dir, tmp_path, capsys):
    with MODELS.registered("ringstep", RingStep):
        assert main(["train", "srm", "--data", str(tiny_dir), "--model", "ringstep", "--out", str(tmp_path / "run"),
                     "--set", "train.epochs=4", "--set", "train.lr=0.1", "--set", "train.batch_size=32",
                     "--set", "train.threads=1", "--json"]) == 0
        trained = json.loads(capsys.readouterr().out)
        assert main(["export", "srm", "--ckpt", str(tmp_path / "run"), "--format", "onnx", "--out",
                     str(tmp_path / "export"), "--json"]) == 0
        weights = load_checkpoint(tmp_path / "run")[0].by_distance.weight.detach().numpy()[:, 0]
    assert "ringstep" not in MODELS
    assert trained["model"] == "ringstep"
    assert np.argmax(weights) == 0  # it learned the walk: the next item on the ring first

    extra = ("policies=['always']", "fusions=['srm']", "device_only=true")
    toy_config = load_sim_config(None, small_overrides(tiny_dir, *extra, f"srm='{tmp_path / 'export'}'"))
    world = load_world(toy_config)
    manifest = read_manifest(tmp_path / "export" / "onnx")
    assert manifest.model_name == "ringstep" and world.scorer.version == manifest.version
    toy = simulate(toy_config, tmp_path / "sim-toy", progress=False, world=world)
    stand_in = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra)), tmp_path / "sim-markov",
                        progress=False)

    # The devices held the toy's export, and their full-catalogue ranking is the toy's to the last event.
    assert toy["srm"] == manifest.version and stand_in["srm"] == "markov-0"
    twin = device_only_ranks(world.streams, RingStepTwin(weights, manifest.history_length), manifest.history_length,
                             world.dataset.num_items, toy_config.slate_size)
    assert toy["device_only"]["ndcg@10"] == pytest.approx(ndcg(twin, 10), abs=1e-12)
    assert toy["device_only"]["ndcg@10"] > 0.5  # most steps of the walk are to the next item: ranked first
    # Knowing the walk's steps, it ranks better than the Markov stand-in's transition counts (0.84 vs 0.75 here),
    # and the slates it re-ranked out of the cloud's lists are not the stand-in's either.
    assert toy["device_only"]["ndcg@10"] > stand_in["device_only"]["ndcg@10"] + 0.03
    toy_run, stand_in_run = toy["runs"][0], stand_in["runs"][0]
    assert toy_run["id"] == stand_in_run["id"] == "always-srm-s0"
    assert toy_run["ndcg@10"] != pytest.approx(stand_in_run["ndcg@10"], abs=1e-3)


# ---- a toy cloud generator ------------------------------------------------------------------------------------


class Ahead:
    """'toy:STEP': after item i, the ring from i + STEP on (STEP = 1: the oracle of the synthetic walk's usual step)."""

    def __init__(self, num_items: int, step: int):
        self.num_items, self.step, self.version = num_items, step, f"toy-{step}"

    def generate(self, histories, n, excludes=None):
        lists = []
        for history, blocked in zip(histories, check_generate_args(histories, n, excludes, self.num_items)):
            start = history[-1] - 1 + self.step if len(history) else 0
            ring = (start + np.arange(self.num_items)) % self.num_items + 1
            best = [int(item) for item in ring if int(item) not in blocked][:n]
            lists.append([Candidate(item, float(n - rank)) for rank, item in enumerate(best)])
        return lists


def load_ahead(arg: str, dataset, seen=None, threads: int = 0) -> Ahead:
    return Ahead(dataset.num_items, int(arg or 1))


def test_a_toy_generator_named_in_the_config_feeds_the_simulated_devices(tiny_dir, tmp_path):
    extra = ("policies=['always']", "fusions=['llm']", "device_only=false")
    with GENERATORS.registered("toy", load_ahead):
        toy = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra, "llm='toy:1'")), tmp_path / "toy",
                       progress=False)
    assert "toy" not in GENERATORS
    popularity = simulate(load_sim_config(None, small_overrides(tiny_dir, *extra)), tmp_path / "pop", progress=False)
    assert toy["generator"] == "toy-1" and popularity["generator"] == "popularity"
    toy_run, popularity_run = toy["runs"][0], popularity["runs"][0]
    assert toy_run["id"] == popularity_run["id"] == "always-llm-s0" and toy_run["request_rate"] == 1.0
    # A fresh toy list before every event starts with the next item on the ring: the slates hit most events,
    # far above the popularity stand-in's lists.
    assert toy_run["ndcg@10"] > 0.5 and toy_run["ndcg@10"] > popularity_run["ndcg@10"] + 0.3
