"""The generator registry: built-ins, refused specs, and a toy registered from this module that runs end to end
(spec -> registry -> cloud server -> gRPC -> simulated devices -> metrics)."""
from __future__ import annotations

import numpy as np
import pytest

from cloud import cli as cloud_cli
from cloud.server import ServerConfig, create_server
from shared.data.dataset import load_dataset, write_dataset
from shared.data.splits import stream_split
from shared.errors import ConfigError
from shared.generator import GENERATORS, PopularityGenerator, check_generate_args, generator_from_spec
from shared.records import Candidate
from simulator.cli import build_parser
from simulator.config import load_sim_config
from simulator.run import simulate
from tests.conftest import synthetic_dataset
from tests.simulator.conftest import small_overrides


class RingToy:
    """Guesses the synthetic ring walk (after item i come i + 1, i + 2, ...), starting `ahead` items on."""

    def __init__(self, num_items: int, ahead: int):
        self.num_items, self.ahead = num_items, ahead
        self.version = f"toy-{ahead}"

    def generate(self, histories, n, excludes=None):
        out = []
        for history, blocked in zip(histories, check_generate_args(histories, n, excludes, self.num_items)):
            last = history[-1] if history else 1
            ring = [(last - 1 + self.ahead - 1 + step) % self.num_items + 1 for step in range(1, self.num_items + 1)]
            out.append([Candidate(item, -float(rank)) for rank, item in enumerate(
                [i for i in ring if i not in blocked][:n])])
        return out


def load_toy(arg: str, dataset, seen=None, threads: int = 0) -> RingToy:
    """'toy:AHEAD' (default 1: the oracle)."""
    if arg and not arg.isdigit():
        raise ConfigError("generator", f"toy:{arg}", "AHEAD must be a whole number")
    return RingToy(dataset.num_items, int(arg or 1))


@pytest.fixture
def toy():
    with GENERATORS.registered("toy", load_toy):
        yield


@pytest.fixture
def data_dir(tmp_path):
    return write_dataset(synthetic_dataset(num_users=30, num_items=60, min_len=16, max_len=28, seed=3),
                         tmp_path / "data")


def test_the_cloud_generators_are_registered():
    assert {"llm", "popularity"} <= set(GENERATORS.names())


def test_popularity_counts_what_it_is_given():
    ds = synthetic_dataset()
    seen = [seq[:-3] for seq in ds.sequences()]
    got = generator_from_spec("popularity", ds, seen).generate([[1, 2]], 5)
    assert got == PopularityGenerator.from_sequences(seen, ds.num_items).generate([[1, 2]], 5)
    everything = generator_from_spec("popularity", ds).generate([[]], 5)
    assert everything == PopularityGenerator.from_sequences(ds.sequences(), ds.num_items).generate([[]], 5)


@pytest.mark.parametrize("spec, fragment", [("nope:x", "unknown generator (known: llm, popularity"),
                                            ("llm", "llm:FOLDER"), ("popularity:3", "takes no argument")])
def test_bad_specs_are_refused_naming_the_spec(spec, fragment):
    with pytest.raises(ConfigError, match="generator") as err:
        generator_from_spec(spec, synthetic_dataset())
    assert repr(spec) in str(err.value) and fragment in str(err.value)


def test_a_registered_toy_is_one_spec_away(toy):
    ds = synthetic_dataset(num_items=60)
    generator = generator_from_spec("toy:2", ds)
    assert generator.version == "toy-2" and [c.item for c in generator.generate([[5]], 3)[0]] == [7, 8, 9]
    assert "toy" in GENERATORS.names()
    with pytest.raises(ConfigError, match="whole number"):
        generator_from_spec("toy:x", ds)


def test_cloud_serve_resolves_any_registered_generator(toy, data_dir):
    serve = ["cloud", "serve", "--address", "127.0.0.1:0"]
    args = build_parser().parse_args([*serve, "--generator", "toy:3", "--data", str(data_dir)])
    assert cloud_cli._load_generator(args, 0).version == "toy-3"
    args = build_parser().parse_args([*serve, "--generator", "toy"])
    with pytest.raises(ConfigError, match="--data"):
        cloud_cli._load_generator(args, 0)
    # --popularity DIR is the spec `popularity` over what the cloud saw under protocol B
    same = [build_parser().parse_args([*serve, *flags]) for flags in
            (["--popularity", str(data_dir)], ["--generator", "popularity", "--data", str(data_dir)])]
    lists = [cloud_cli._load_generator(args, 0).generate([[1, 2, 3]], 10) for args in same]
    assert lists[0] == lists[1]


def test_a_toy_generator_reaches_the_devices_end_to_end(toy, data_dir, tmp_path):
    """The toy, named by its spec, served by the real gRPC server; the simulated devices' slates are its lists."""
    extra = ("policies=['always', 'never']", "fusions=['llm']", "device_only=false")
    dataset = load_dataset(data_dir)
    figures = {}
    for spec in ("toy:1", "popularity"):
        generator = generator_from_spec(spec, dataset, stream_split(dataset).cloud_seen)
        server, port = create_server(ServerConfig(address="127.0.0.1:0"), generator)
        try:
            remote = load_sim_config(None, small_overrides(data_dir, *extra, "mode='grpc'",
                                                           f"server='127.0.0.1:{port}'"))
            metrics = simulate(remote, tmp_path / spec.replace(":", "-"), progress=False)
        finally:
            server.stop(0)
        figures[spec] = {r["policy"]: r for r in metrics["runs"]}
    toy_always, pop_always = figures["toy:1"]["always"], figures["popularity"]["always"]
    # Fresh toy lists start with the next ring item: the slates that reached the devices hit almost every event.
    assert toy_always["request_rate"] == 1.0 and toy_always["ndcg@10"] > 0.5
    assert toy_always["ndcg@10"] > pop_always["ndcg@10"] + 0.3
    assert np.isfinite(figures["toy:1"]["never"]["ndcg@10"])
