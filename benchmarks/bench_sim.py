"""Simulator speed: in-process replay of every ML-100K user x 10 events for one policy, and gRPC mode events/s.

Models: the stand-ins (popularity cloud, Markov SRM) unless LSC4REC_BENCH_LLM / LSC4REC_BENCH_SRM name
trained folders. Targets (issue 7): in-process replay <= 30 s; gRPC mode >= 500 device events/s.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.common import emit

REPO = Path(__file__).resolve().parent.parent


def _config(*extra: str):
    from simulator.config import load_sim_config

    models = [f'llm="{os.environ.get("LSC4REC_BENCH_LLM", "")}"', f'srm="{os.environ.get("LSC4REC_BENCH_SRM", "")}"']
    return load_sim_config(None, [f'data="{REPO / "data" / "ml-100k"}"', "seeds=[0]", *models, *extra])


def bench_inprocess() -> None:
    from device.runtime.policies import PolicySpec
    from simulator.experiments import load_world, make_replay, warm

    config = _config()
    began = time.perf_counter()
    world = load_world(config)
    loaded = time.perf_counter()
    warm(world, progress=False)
    warmed = time.perf_counter()
    replay = make_replay(world, progress=False)
    initial = replay.initial_lists()
    start = time.perf_counter()
    result = replay.run(PolicySpec("threshold", threshold=config.threshold), "fusion", 0, initial=initial)
    replay_s = time.perf_counter() - start
    events = len(result.rows["user"])
    emit("sim_inprocess_replay", seed=0, users=len(world.streams.users), events=events, policy="threshold",
         fusion="fusion", replay_s=replay_s, events_per_s=events / replay_s, load_s=loaded - began,
         warm_s=warmed - loaded, total_s=time.perf_counter() - began, target_s=30.0, met=replay_s <= 30.0,
         generator=getattr(world.generator, "version", "?"), srm=world.scorer.version)


def bench_grpc() -> None:
    from device.runtime.policies import PolicySpec
    from simulator.experiments import load_world, make_replay
    from simulator.cloud_link import GrpcSource
    from simulator.server_proc import ServerProcess

    llm = os.environ.get("LSC4REC_BENCH_LLM", "")
    server = ServerProcess(llm, dataset_dir=str(REPO / "data" / "ml-100k")).start()
    try:
        for policy in (PolicySpec("threshold", threshold=_config().threshold), PolicySpec("always")):
            config = _config("mode='grpc'", f"server='{server.address}'")
            source = GrpcSource(server.address, 1682, config.grpc_concurrency)
            world = load_world(config, source=source)
            replay = make_replay(world, progress=False)
            start = time.perf_counter()
            result = replay.run(policy, "fusion", 0)
            took = time.perf_counter() - start
            source.close()
            events = len(result.rows["user"])
            requests = int(result.rows["requested"].sum()) + len(world.streams.users)
            emit("sim_grpc_replay", seed=0, policy=policy.build().label(), users=len(world.streams.users), events=events,
                 cloud_calls=requests, wall_s=took, events_per_s=events / took, calls_per_s=requests / took,
                 target_events_per_s=500, met=events / took >= 500, generator="llm" if llm else "popularity (server)")
    finally:
        server.stop()


def main() -> None:
    bench_inprocess()
    bench_grpc()


if __name__ == "__main__":
    main()
