"""A running server picks up a newly published generator version (a grown catalogue) without a restart: it then
answers with new item ids and accepts them in histories; a version that shrinks or reorders the catalogue, or that is
corrupt or does not load, is refused once (one log line) and the last good generator keeps answering."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cloud.generator_versions import GeneratorWatcher, RECORD_NAME, read_version, write_record
from cloud.llm.growth import publish
from cloud.server import ServerConfig, create_server
from shared import wire
from shared.data.catalog import RAW_IDS_NAME, CatalogRef
from shared.rpc import lsc4rec_pb2 as pb
from shared.rpc import lsc4rec_pb2_grpc as pb_grpc
from tests.cloud.grown_world import untrained
from tests.conftest import REPO

POLL_S = 0.05


def until(check, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ask(stub, history, n):
    reply = stub.GetCandidates(pb.GetCandidatesRequest(user_id="u", history=history, num_candidates=n), timeout=10)
    return wire.response_from_pb(reply, None)


def republish_base(world, generators) -> Path:
    """The trained run as a version over its own catalogue (nothing new): what a server starts from."""
    folder, added = publish(world.run, world.base_dir, generators, vectors=world.base_vectors)
    assert added == 0
    return folder


def grow(world, generators) -> Path:
    return publish(world.run, world.grown_dir, generators, vectors=world.grown_vectors)[0]


def newer_copy(source: Path, generators: Path, name: str, edit) -> Path:
    """A copy of a version folder under a newer version id, edited by `edit(folder)` before its record is rewritten
    (a folder that verifies but holds what `edit` did)."""
    folder = shutil.copytree(source, generators / f".{name}")
    version = read_version(source)
    edit(folder)
    raw_ids = tuple((folder / RAW_IDS_NAME).read_text().splitlines())
    (folder / RECORD_NAME).unlink()
    newer = version.version.replace(version.version[:4], str(int(version.version[:4]) + 1), 1)
    write_record(folder, newer, CatalogRef.of(raw_ids), **{k: v for k, v in version.record.items()
                                                           if k not in ("format", "version", "vocab_hash",
                                                                        "num_items", "files")})
    return folder.rename(generators / name)  # appears whole, as publish-llm's folders do


@pytest.fixture
def served(grown_world, tmp_path):
    generators = tmp_path / "generators"
    first = republish_base(grown_world, generators)
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=1.0), None)
    watcher = GeneratorWatcher(server, generators, CatalogRef.of(grown_world.base.items), poll_s=POLL_S)
    server.on_stop(watcher.stop)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert watcher.start().folder == first
        yield grown_world, generators, server, watcher, pb_grpc.CandidateServiceStub(channel)
    finally:
        channel.close()
        server.stop(0)


def test_a_published_version_is_switched_to_and_serves_the_new_items(served, caplog):
    world, generators, server, watcher, stub = served
    history = [int(i) for i in world.base.sequences()[0][-5:]]
    before = ask(stub, history, 5)
    assert before.generator_version == server.generator_version == watcher.current.version
    with pytest.raises(grpc.RpcError) as info:  # not yet: the served catalogue ends at the base's last item
        ask(stub, history + [world.new_ids[0]], 5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    caplog.set_level(logging.INFO, logger="lsc4rec.cloud")
    folder = grow(world, generators)
    version = read_version(folder).version
    until(lambda: server.generator_version == version, what="the switch")
    assert server.catalog.num_items == world.grown.num_items

    def switched_lines() -> list[str]:  # logged once the old batcher has drained, after the swap itself
        return [r.getMessage() for r in caplog.records if "generator switched" in r.getMessage()]

    until(lambda: switched_lines(), what="the switch's log line")
    switched = switched_lines()
    assert switched == [f"generator switched {before.generator_version} -> {version} (40 -> 43 items)"]
    n = len(set(untrained(folder).tolist()) - set(history))
    after = ask(stub, history, n)
    assert after.generator_version == version and set(world.new_ids) <= {c.item for c in after.candidates}
    with_new = ask(stub, history + [world.new_ids[0]], 5)  # a history naming a new item is accepted now
    assert world.new_ids[0] not in {c.item for c in with_new.candidates}
    metrics = server.metrics.text().decode()
    assert f'lsc4rec_generator_items{{version="{version}"}} 43.0' in metrics
    assert before.generator_version not in metrics and 'lsc4rec_generator_switches_total{outcome="switched"} 1.0' in metrics


def _reorder(folder: Path) -> None:
    lines = (folder / RAW_IDS_NAME).read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    (folder / RAW_IDS_NAME).write_text("".join(f"{r}\n" for r in lines))


def _truncate_weights(folder: Path) -> None:
    weights = next((folder / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])


def _break_config(folder: Path) -> None:
    (folder / "model" / "config.json").write_text("{not json")


def test_bad_versions_are_refused_once_and_the_last_good_one_keeps_answering(served, caplog):
    world, generators, server, watcher, stub = served
    good = grow(world, generators)
    good_version = read_version(good).version
    until(lambda: server.generator_version == good_version, what="the good version")
    caplog.set_level(logging.INFO, logger="lsc4rec.cloud.generators")
    shrunk = republish_base(world, generators)  # newer, but back to 40 items
    reordered = newer_copy(good, generators, "llm-reordered", _reorder)
    corrupt = shutil.copytree(good, generators / ".corrupt")
    _truncate_weights(corrupt)  # its record no longer matches
    corrupt = corrupt.rename(generators / "llm-corrupt")
    unloadable = newer_copy(good, generators, "llm-unloadable", _break_config)
    bad = {f.name for f in (shrunk, reordered, corrupt, unloadable)}
    until(lambda: bad <= watcher.refused.keys(), what="the refusals")
    time.sleep(10 * POLL_S)  # more polls: nothing is read again
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing generator folder")]
    assert sorted(line.split(":")[0].rsplit("/", 1)[1] for line in lines) == sorted(bad)  # one line each
    assert f"{RAW_IDS_NAME}: field 'item': 40 items, fewer than the 43" in watcher.refused[shrunk.name]
    assert f"{RAW_IDS_NAME}:4: field 'raw_id': item 3" in watcher.refused[reordered.name]
    assert ".safetensors: size 100, generator.json field 'files' says" in watcher.refused[corrupt.name]
    assert "config.json" in watcher.refused[unloadable.name] and "not a valid JSON" in watcher.refused[unloadable.name]
    history = [int(i) for i in world.base.sequences()[1][-4:]] + [world.new_ids[1]]
    assert ask(stub, history, 5).generator_version == good_version == server.generator_version
    assert server.metrics.text().decode().count('outcome="refused"} 4.0') == 1


def serve(args, tmp_path):
    """`lsc4rec cloud serve ARGS` as a real process on 127.0.0.1 (any port; the bound one goes to a port file)."""
    return subprocess.Popen([sys.executable, "-m", "simulator.cli", "cloud", "serve", *args, "--address",
                             "127.0.0.1:0", "--port-file", str(tmp_path / "port")],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cloud_serve_generators_switches_to_a_version_published_while_it_runs(grown_world, tmp_path):
    generators = tmp_path / "generators"
    republish_base(grown_world, generators)
    proc = serve(["--generators", str(generators), "--data", str(grown_world.base_dir),
                  "--set", f"generator_poll_s={POLL_S}"], tmp_path)
    try:
        until(lambda: (tmp_path / "port").exists() or proc.poll() is not None, timeout=120, what="the server")
        assert proc.poll() is None, proc.communicate()[1]
        channel = grpc.insecure_channel(f"127.0.0.1:{(tmp_path / 'port').read_text().strip()}")
        stub = pb_grpc.CandidateServiceStub(channel)
        version = read_version(grow(grown_world, generators)).version
        until(lambda: ask(stub, [1, 2], 5).generator_version == version, what="the switch")
        assert ask(stub, [1, grown_world.new_ids[2]], 5).generator_version == version
        channel.close()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    assert stderr.count("generator switched") == 1 and f"-> {version} (40 -> 43 items)" in stderr


def test_cloud_serve_refuses_a_generators_folder_without_a_valid_version(grown_world, tmp_path):
    (tmp_path / "generators" / "llm-empty").mkdir(parents=True)
    proc = serve(["--generators", str(tmp_path / "generators"), "--data", str(grown_world.base_dir)], tmp_path)
    _, stderr = proc.communicate(timeout=120)
    last = stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("lsc4rec: error: config key '--generators'"), stderr
    assert f"no valid generator version (llm-empty: {tmp_path / 'generators' / 'llm-empty' / RECORD_NAME}: " \
           "missing" in last
    assert not (tmp_path / "port").exists()
