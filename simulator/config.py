"""Simulation config (one frozen dataclass per part), preset lookup, and checks against the data."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from device.runtime.consistency import MEASURES
from device.runtime.fusion import LLM_NORMS, SRM_NORMS
from device.runtime.policies import POLICIES
from shared.config import check, load_config, resolve_preset as _resolve
from shared.data.splits import min_stream_user_length

FUSIONS = ("llm", "srm", "fusion")
#: The request policy the report's bars and headline are about (device.runtime.policies.budget), and the grid's
#: chance baseline for it: random requests at the rate each of its runs realised.
HEADLINE_POLICY = "budget"
MATCHED_RANDOM = "random-matched"
PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass(frozen=True)
class NetworkConfig:
    """The modelled cloud link: seeded latency, bandwidth, loss and outage windows."""

    latency_ms: float = 40.0  # median round-trip time (lognormal)
    latency_sigma: float = 0.5  # lognormal shape; 0 = constant latency
    bandwidth_mbps: float = 20.0  # transfer time = bytes * 8 / bandwidth
    loss: float = 0.0  # probability a request is lost (the device keeps its cache)
    timeout_ms: float = 2000.0  # a call slower than this fails like a lost one
    # Outage windows as fractions of the replay's virtual time span, e.g. [[0.4, 0.5]].
    outages: tuple[tuple[float, float], ...] = ()
    # "next-step": a successful answer is in time for the next event (protocol B exactly);
    # "clock": it arrives at event time + latency and misses next events that come sooner.
    deliver: Literal["next-step", "clock"] = "next-step"

    def __post_init__(self):
        check(self.latency_ms >= 0, "network.latency_ms", self.latency_ms, "must be >= 0")
        check(self.latency_sigma >= 0, "network.latency_sigma", self.latency_sigma, "must be >= 0")
        check(self.bandwidth_mbps > 0, "network.bandwidth_mbps", self.bandwidth_mbps, "must be > 0")
        check(0 <= self.loss < 1, "network.loss", self.loss, "must be in [0, 1)")
        check(self.timeout_ms > 0, "network.timeout_ms", self.timeout_ms, "must be > 0")
        for window in self.outages:
            check(len(window) == 2 and 0 <= window[0] < window[1] <= 1, "network.outages", window,
                  "each window is [start, end] with 0 <= start < end <= 1 (fractions of the replay span)")


@dataclass(frozen=True)
class RetrainConfig:
    """Adaptive re-training on the virtual clock: fine-tune, export, publish, devices update."""

    every: int = 0  # stream events between re-trainings (global count); 0 = off
    budget_s: float = 20.0  # wall-time budget of one fine-tuning
    epochs: int = 1  # passes over the fresh events per fine-tuning (the budget may end it first)

    def __post_init__(self):
        check(self.every >= 0, "retrain.every", self.every, "must be >= 0 (0 = off)")
        check(self.budget_s > 0, "retrain.budget_s", self.budget_s, "must be > 0")
        check(self.epochs >= 1, "retrain.epochs", self.epochs, "must be >= 1")


@dataclass(frozen=True)
class SimConfig:
    """One experiment: protocol B parameters, models, the policy x fusion x budget x seed grid."""

    data: str = "data/ml-100k"
    llm: str = ""  # cloud generator: a spec ("llm:DIR", a registered NAME[:ARG]) or an LLM folder; "" = popularity
    srm: str = ""  # exported SRM folder (manifest.json + model); "" = numpy Markov stand-in
    # the device model of `srm`: "onnx" / "pte" (the SRM with its item table), or "user-encoder" (the
    # catalogue-free device: item vectors come from the cloud; needs a measure that reads no catalogue)
    srm_format: Literal["onnx", "pte", "user-encoder"] = "onnx"
    stream_length: int = 10  # S
    cloud_lag: int = 3
    num_candidates: int = 50  # N
    slate_size: int = 10  # K
    max_users: int = 0  # 0 = every user the protocol admits
    # Protocol C (new items): the cold draw (train ... --protocol cold-stream --cold-seed S) the LLM and the SRM were
    # trained without; -1 = none. Its items appear only in the streams; the report splits out their events.
    cold_seed: int = -1
    cold_fraction: float = 0.1
    # Request policies by their device names (device.runtime.policies.POLICIES): never, always, every, random,
    # threshold, budget. Those with a request budget run once per entry of `budgets`.
    policies: tuple[str, ...] = ("never", "always", "every", "random", "budget")
    fusions: tuple[str, ...] = FUSIONS
    budgets: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    seeds: tuple[int, ...] = (0, 1, 2)
    alpha: float = 0.5  # fusion weight of the LLM side
    # How each side's scores enter fusion, by the device's names (device.runtime.fusion.SRM_NORMS / LLM_NORMS): the
    # SRM's as "prob" (sigmoid - 0.5), "rank" or raw "logit"; the LLM's as "rank" -(j+1)/N, "softmax" or "logprob"
    # (its sequence log-probabilities). "logprob" + "logit" is a weighted product of the two models' probabilities.
    srm_norm: str = "prob"
    llm_norm: str = "rank"
    threshold: float = 30.0  # the fixed threshold of the "threshold" policy
    # Inconsistency score of the threshold and budget policies, a name of device.runtime.consistency.MEASURES:
    # an order measure (lsc4rec = the reference's footrule + (4 + 0.3 Z)^2), or "regret" (catalogue_regret: the
    # SRM's top-K belief over the whole catalogue that the cached list misses).
    measure: str = "lsc4rec"
    # budget: "threshold" = one threshold per budget from the calibration replay, kept fixed;
    # "adaptive" = device.runtime.policies.budget.Budget shared by the fleet, warm-started with the calibration
    # replay's scores and steered online to the budget (its realised rate follows the budget when the stream's
    # scores drift from the calibration's).
    budget_mode: Literal["threshold", "adaptive"] = "threshold"
    matched_random: bool = True  # add random requests at each budget run's realised rate ("random-matched")
    # Policies without randomness give the same slates for every seed when the network drops nothing:
    # run them for the first seed only (random policies still run for every seed).
    deterministic_once: bool = True
    device_only: bool = True  # add the no-cloud baseline: SRM ranking the full catalogue
    calibration_iters: int = 30
    calibration_users: int = 0  # users in the calibration replay (0 = all; fewer = fewer cloud calls)
    mode: Literal["inprocess", "grpc"] = "inprocess"
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_workers: int = 2
    server: str = ""  # grpc mode: address of a running server; "" = start `lsc4rec cloud serve`
    grpc_concurrency: int = 32
    write_rows: bool = True
    network: NetworkConfig = field(default_factory=NetworkConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def __post_init__(self):
        check(self.stream_length >= 1, "stream_length", self.stream_length, "must be >= 1")
        check(self.cloud_lag >= 0, "cloud_lag", self.cloud_lag, "must be >= 0")
        check(self.num_candidates >= 1, "num_candidates", self.num_candidates, "must be >= 1")
        check(1 <= self.slate_size <= self.num_candidates, "slate_size", self.slate_size,
              f"K must be in 1..N (N = num_candidates = {self.num_candidates})")
        check(self.max_users >= 0, "max_users", self.max_users, "must be >= 0 (0 = all)")
        check(self.cold_seed >= -1, "cold_seed", self.cold_seed, "must be -1 (no cold items) or a cold draw >= 0")
        check(0 < self.cold_fraction < 1, "cold_fraction", self.cold_fraction, "must be in (0, 1)")
        for p in self.policies:
            check(p in POLICIES, "policies", p, f"unknown policy (known: {', '.join(POLICIES.names())})")
        for f in self.fusions:
            check(f in FUSIONS, "fusions", f, f"unknown fusion (known: {', '.join(FUSIONS)})")
        for b in self.budgets:
            check(0 < b <= 1, "budgets", b, "a request budget is a rate in (0, 1]")
        check(len(self.seeds) >= 1, "seeds", self.seeds, "give at least one seed")
        check(0 <= self.alpha <= 1, "alpha", self.alpha, "must be in [0, 1]")
        check(self.srm_norm in SRM_NORMS, "srm_norm", self.srm_norm,
              f"unknown SRM norm (known: {', '.join(SRM_NORMS.names())})")
        check(self.llm_norm in LLM_NORMS, "llm_norm", self.llm_norm,
              f"unknown LLM norm (known: {', '.join(LLM_NORMS.names())})")
        check(math.isfinite(self.threshold), "threshold", self.threshold, "must be finite")
        check(self.measure in MEASURES, "measure", self.measure,
              f"unknown measure (known: {', '.join(MEASURES.names())})")
        check(self.srm_format != "user-encoder" or not MEASURES.get(self.measure).needs_catalogue, "measure",
              self.measure, "needs the whole catalogue, which a catalogue-free device (srm_format = user-encoder) "
                            "does not hold")
        check(self.srm_format != "user-encoder" or not self.retrain.every, "retrain.every", self.retrain.every,
              "re-training swaps a model with its item table; a catalogue-free device (user-encoder) does not "
              "support it yet")
        check(not MEASURES.get(self.measure).needs_partition or self.srm_format == "user-encoder", "measure",
              self.measure, "needs a user encoder with a partition head (srm_format = user-encoder)")
        check(self.budget_mode == "threshold" or all(b < 1 for b in self.budgets), "budgets", self.budgets,
              "an adaptive budget is a rate in (0, 1)")
        check(self.calibration_iters >= 1, "calibration_iters", self.calibration_iters, "must be >= 1")
        check(self.calibration_users >= 0, "calibration_users", self.calibration_users, "must be >= 0 (0 = all)")
        check(self.ray_workers >= 1, "ray_workers", self.ray_workers, "must be >= 1")
        check(self.grpc_concurrency >= 1, "grpc_concurrency", self.grpc_concurrency, "must be >= 1")
        check(not (self.backend == "ray" and self.retrain.every), "retrain.every", self.retrain.every,
              "re-training couples all users on one clock; use backend = local with it")
        check(not (self.backend == "ray" and self.mode == "grpc"), "backend", self.backend,
              "the ray backend runs the in-process cloud; use mode = inprocess")


def resolve_preset(preset: str) -> Path:
    """A preset name (simulator/presets/NAME.toml) or a path to a TOML file."""
    return _resolve(PRESET_DIR, preset)


def load_sim_config(preset: str | None, overrides: list[str] | None = None) -> SimConfig:
    """Defaults, then the preset, then `key=value` overrides; unknown keys and bad values refused."""
    return load_config(SimConfig, resolve_preset(preset) if preset else None, overrides)


def check_against_data(config: SimConfig, sequences: list, num_items: int) -> None:
    """Refuse parameters the data cannot support, before any work (names the key and value)."""
    need = min_stream_user_length(config.stream_length, config.cloud_lag)
    longest = max((len(s) for s in sequences), default=0)
    check(longest >= need, "stream_length", config.stream_length,
          f"S + cloud_lag + 2 = {need} interactions are needed but the longest history has {longest}")
    room = num_items - longest
    check(config.num_candidates <= room, "num_candidates", config.num_candidates,
          f"N must leave room beside the longest history: at most {room} ({num_items} items, "
          f"longest history {longest})")
