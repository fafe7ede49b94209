"""The cloud unreachable for 10 simulated minutes in the simulator: every warm device still shows a valid slate."""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from tests.reliability.harness import report

pytestmark = pytest.mark.fault


def test_simulated_ten_minute_outage_warm_devices_keep_valid_slates(tmp_path):
    from shared.data.dataset import write_dataset
    from simulator.config import load_sim_config
    from device.runtime.policies import PolicySpec
    from simulator.experiments import load_world, make_replay
    from tests.conftest import synthetic_dataset

    data = write_dataset(synthetic_dataset(num_users=30, num_items=60, min_len=16, max_len=28, seed=3),
                         tmp_path / "data")
    config = load_sim_config(None, [f'data="{data}"', "num_candidates=20", "slate_size=5", "stream_length=6",
                                    "cloud_lag=2", "seeds=[0]"])
    world = load_world(config)
    start, end = world.streams.span
    first = float(np.median(world.streams.times))  # 10 simulated minutes from the median stream event
    window = ((first - start) / (end - start), min(1.0, (first + 600.0 - start) / (end - start)))
    world = dataclasses.replace(world, config=dataclasses.replace(
        config, network=dataclasses.replace(config.network, outages=(window,))))
    replay = make_replay(world, progress=False)
    counts = collections.Counter()
    original = replay._event

    def event(u, t, sess, pending, answers):
        if replay.network.in_outage(float(replay.s.times[u, t])):
            items = sess.slate().items
            counts["events_in_outage"] += 1
            counts["valid"] += bool(items) and not set(items) & set(sess.history) and \
                all(1 <= i <= world.dataset.num_items for i in items)
        original(u, t, sess, pending, answers)

    replay._event = event
    result = replay.run(PolicySpec("always"), "fusion", seed=0)
    rows = result.rows
    in_outage = np.array([replay.network.in_outage(float(ts)) for ts in rows["ts"]])
    failed = int((rows["requested"] & ~rows["delivered"] & in_outage).sum())
    report("fault.sim_outage", simulated_outage_s=600, window=[round(w, 6) for w in window],
           sessions=len(world.streams.users), events_in_outage=counts["events_in_outage"],
           valid_slates=counts["valid"], failed_requests_in_outage=failed)
    assert counts["events_in_outage"] >= 10
    assert counts["valid"] == counts["events_in_outage"]  # 100% of warm sessions still show a valid slate
    assert failed > 0  # the outage really cut the cloud off
