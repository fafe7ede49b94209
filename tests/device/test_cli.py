"""`lsc4rec device run` against a real loopback cloud server, and `device bench` figures."""
import json
import shutil

import numpy as np
import pytest

from shared.errors import DataFormatError
from simulator.cli import main
from tests.device.conftest import NUM_ITEMS


@pytest.fixture
def server(tmp_path, onnx_dir_v2):
    pytest.importorskip("cloud.server")
    from cloud.registry import publish
    from cloud.server import ServerConfig, create_server
    from shared.generator import PopularityGenerator

    publish(onnx_dir_v2, tmp_path / "published")
    counts = np.arange(NUM_ITEMS + 1, dtype=np.int64)  # item N most popular
    srv, port = create_server(ServerConfig(address="127.0.0.1:0"), PopularityGenerator(counts),
                              models_dir=tmp_path / "published")
    yield f"127.0.0.1:{port}"
    srv.stop(grace=0)


def test_device_run_replays_events_and_updates_the_model(server, onnx_dir, tmp_path, capsys):
    model = shutil.copytree(onnx_dir, tmp_path / "device" / "model")
    events = tmp_path / "events.txt"
    events.write_text("# one user's stream\n3\n30\n\n29 1700000000\n5\n")
    past = tmp_path / "past.txt"
    past.write_text("7\n8\n")
    code = main(["device", "run", "--server", server, "--model", str(model), "--user", "u7", "--events", str(events),
                 "--history", str(past), "--policy", "every:2", "--slate-size", "5", "--num-candidates", "12", "--check-update", "--json",
                 "--fusion", "linear", "--alpha", "0.3", "--llm-norm", "logprob", "--srm-norm", "logit"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["model_update"] == "updated" and rows[0]["model_version"] == "v2"
    steps = [r for r in rows if "event" in r]
    assert [r["item"] for r in steps] == [3, 30, 29, 5]
    assert steps[0]["requested"] and steps[0]["request_ok"] and "no candidates" in steps[0]["reason"]
    for n, row in enumerate(steps):
        assert len(row["slate"]) == 5 and not row["stale"]
        assert not set(row["slate"]) & ({7, 8} | {s["item"] for s in steps[:n + 1]})
    summary = rows[-1]
    assert summary["events"] == 4 and summary["requests"] >= 2 and summary["request_bytes"] > 0
    assert summary["model_version"] == "v2"


def test_device_run_with_unreachable_cloud_keeps_going(onnx_dir, tmp_path, capsys):
    events = tmp_path / "events.txt"
    events.write_text("1\n2\n")
    code = main(["device", "run", "--server", "127.0.0.1:1", "--model", str(onnx_dir), "--user", "u", "--events",
                 str(events), "--timeout", "0.2", "--slate-size", "5", "--num-candidates", "12"])
    out = capsys.readouterr().out
    assert code == 0 and "FAILED" in out and "STALE" in out


def test_bad_events_file_names_the_line(tmp_path):
    from device.cli import read_events

    path = tmp_path / "e.txt"
    path.write_text("1\nabc\n")
    with pytest.raises(DataFormatError, match=":2"):
        read_events(path)


def test_device_bench_prints_figures(onnx_dir, capsys, tmp_path):
    from tests.device.conftest import write_artifact

    big = write_artifact(tmp_path / "big", num_items=600, vocab_hash="v600")
    assert main(["device", "bench", "--model", str(big), "--events", "50", "--history", "20", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["event_p50_us"] > 0 and figures["overhead_p50_us"] > 0 and figures["events"] == 50
    assert figures["rss_mb"] > 0 and figures["torch_loaded"] in (True, False)
