"""The modelled cloud link: seeded latency, bandwidth, loss and outage windows on the virtual clock."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import NetworkConfig


@dataclass(frozen=True)
class Delivery:
    """What the network did to one request."""

    ok: bool
    latency_ms: float  # modelled round trip + transfer (also for failed calls: time until failure)
    reason: str = ""  # "", "lost", "outage", "timeout"


class NetworkModel:
    """Decides per request (seeded by seed, user, step) whether and when the answer arrives."""

    def __init__(self, config: NetworkConfig, seed: int, span: tuple[float, float], max_user: int = 0,
                 steps: int = 1):
        self.config, self.seed = config, seed
        # Draws indexed by (dense user id, step): any subset of users (a Ray shard) sees the same ones.
        rng = np.random.default_rng([seed, 0x5EED])
        self.normal = rng.standard_normal((max_user + 1, steps))
        self.uniform = rng.random((max_user + 1, steps))
        start, end = span
        width = max(end - start, 1e-9)
        self.windows = [(start + a * width, start + b * width) for a, b in config.outages]

    def in_outage(self, ts: float) -> bool:
        return any(a <= ts < b for a, b in self.windows)

    def deliver(self, user: int, step: int, ts: float, bytes_up: int, bytes_down: int) -> Delivery:
        cfg = self.config
        if user < self.normal.shape[0] and step < self.normal.shape[1]:
            normal, uniform = float(self.normal[user, step]), float(self.uniform[user, step])
        else:  # outside the table (not in a replay): an independent draw
            rng = np.random.default_rng([self.seed, user, step, 0x5EED])
            normal, uniform = float(rng.standard_normal()), float(rng.random())
        rtt = cfg.latency_ms * float(np.exp(cfg.latency_sigma * normal))
        transfer = (bytes_up + bytes_down) * 8.0 / (cfg.bandwidth_mbps * 1e3)  # ms
        latency = rtt + transfer
        lost = uniform < cfg.loss
        if self.in_outage(ts):
            return Delivery(False, cfg.timeout_ms, "outage")
        if lost:
            return Delivery(False, cfg.timeout_ms, "lost")
        if latency > cfg.timeout_ms:
            return Delivery(False, cfg.timeout_ms, "timeout")
        return Delivery(True, latency)
