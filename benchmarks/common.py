"""Helpers every benchmark uses: timing percentiles and one JSON line per figure with the machine."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np


def machine() -> dict[str, Any]:
    """Hardware and versions recorded with every figure."""
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}
    for name in ("torch", "onnxruntime", "executorch", "grpc", "transformers", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", None) or _distribution_version(name)
    return info


def _distribution_version(name: str) -> str:
    """The installed distribution's version, for modules without __version__ (executorch)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def emit(figure: str, seed: int | None = None, **values: Any) -> None:
    """Print one JSON line: {"figure": ..., <values>, "seed": ..., "machine": {...}}."""
    record = {"figure": figure, **values, "seed": seed, "machine": machine()}
    print(json.dumps(record, sort_keys=True, default=float), flush=True)


def percentiles_us(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean in microseconds from samples in seconds."""
    arr = np.asarray(samples_s, dtype=np.float64) * 1e6
    return {"p50_us": float(np.percentile(arr, 50)), "p90_us": float(np.percentile(arr, 90)),
            "p99_us": float(np.percentile(arr, 99)), "mean_us": float(arr.mean()), "n": int(arr.size)}


ROUNDS = 20  # blocks of time_interleaved; best_round_p50_us splits the samples the same way


def time_interleaved(fns: dict[str, Callable[[], Any]], repeat: int = 1000, rounds: int = ROUNDS,
                     warmup: int = 50) -> dict[str, dict[str, list[float]]]:
    """Wall and thread-CPU time (seconds) of every call of each fn, the fns taking turns in `rounds` blocks.

    Taking turns spreads a shared machine's slow minutes over every variant alike, so their ratios hold
    even when the absolute figures drift; the CPU time leaves out the time the thread was descheduled.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: {"wall": [], "cpu": []} for name in fns}
    per_round = max(1, repeat // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = out[name]["wall"], out[name]["cpu"]
            for _ in range(per_round):
                start_cpu = time.thread_time()
                start = time.perf_counter()
                fn()
                wall.append(time.perf_counter() - start)
                cpu.append(time.thread_time() - start_cpu)
    return out


def best_round_p50_us(samples_s: list[float], rounds: int = ROUNDS) -> float:
    """p50 (microseconds) of the fastest of the `rounds` consecutive blocks of `time_interleaved` samples: the
    cost on the machine's quietest stretch, an estimate of the code's own cost that host load moves least
    (as `timeit` takes the minimum). Targets stay judged on the overall p50."""
    blocks = np.array_split(np.asarray(samples_s, dtype=np.float64), rounds)
    return float(min(np.percentile(block, 50) for block in blocks if block.size)) * 1e6


def time_calls(fn: Callable[[], Any], repeat: int = 1000, warmup: int = 50) -> list[float]:
    """Wall time of each call, in seconds, after a warm-up."""
    return time_interleaved({"fn": fn}, repeat=repeat, rounds=1, warmup=warmup)["fn"]["wall"]
