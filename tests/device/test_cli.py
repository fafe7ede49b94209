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


def test_device_run_prints_titles_beside_ids_with_the_dataset(server, onnx_dir, tmp_path, capsys):
    from shared.data.dataset import load_dataset, write_dataset
    from tests.conftest import synthetic_dataset

    data = write_dataset(synthetic_dataset(num_users=20, num_items=NUM_ITEMS, min_len=16, max_len=20), tmp_path / "d")
    events = tmp_path / "events.txt"
    events.write_text("3\n30\n")
    args = ["device", "run", "--server", server, "--model", str(onnx_dir), "--user", "u7", "--events", str(events),
            "--slate-size", "5", "--num-candidates", "12", "--data", str(data)]
    assert main(args + ["--json"]) == 0
    steps = [row for row in map(json.loads, capsys.readouterr().out.splitlines()) if "event" in row]
    titles = {item.id: item.title for item in load_dataset(data).items}
    for row in steps:
        assert row["item_title"] == titles[row["item"]]
        assert row["slate_titles"] == [titles[i] for i in row["slate"]] and len(row["slate"]) == 5
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"item 3 {titles[3]}" in out and f"{steps[0]['slate'][0]} {titles[steps[0]['slate'][0]]}" in out


def test_device_run_refuses_a_dataset_of_another_catalogue(onnx_dir, tmp_path, capsys):
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    data = write_dataset(synthetic_dataset(num_users=20, num_items=40), tmp_path / "d")
    events = tmp_path / "events.txt"
    events.write_text("1\n")
    code = main(["device", "run", "--server", "127.0.0.1:1", "--model", str(onnx_dir), "--user", "u", "--events",
                 str(events), "--data", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and "data" in err and "40 items" in err and f"{NUM_ITEMS}" in err


@pytest.mark.parametrize("flag, old", [("--policy", "consistency:0.2"), ("--policy", "every-n:3"),
                                       ("--policy", "consistency-budget:0.2"), ("--srm-norm", "sigmoid"),
                                       ("--measure", "cosine")])
def test_device_run_refuses_old_and_unknown_spellings_with_exit_2(onnx_dir, tmp_path, capsys, flag, old):
    events = tmp_path / "events.txt"
    events.write_text("1\n")
    with pytest.raises(SystemExit) as info:
        main(["device", "run", "--server", "127.0.0.1:1", "--model", str(onnx_dir), "--user", "u", "--events",
              str(events), flag, old])
    err = capsys.readouterr().err
    assert info.value.code == 2 and flag in err and old in err
    known = {"--policy": ("never", "every:N", "budget:R"), "--srm-norm": ("prob", "logit"), "--measure": ("regret",)}
    assert all(name in err for name in known[flag]), err


def test_device_run_defaults_are_what_the_demo_runs():
    """`device run` without options fuses and requests as `make demo` does (the measured best, docs/results.md)."""
    from device.runtime.cli import BEST_FUSION, BEST_POLICY, FREE_MEASURE
    from device.runtime.policies import parse_policy
    from simulator.cli import build_parser
    from simulator.config import load_sim_config
    from simulator.device_adapter import fusion_config

    demo = load_sim_config("demo")
    assert fusion_config("fusion", demo.alpha, demo.srm_norm, demo.llm_norm) == BEST_FUSION
    # the demo's device is catalogue-free; `device run` picks est-regret for such a model (regret for one with its table)
    assert demo.srm_format == "user-encoder" and demo.measure == FREE_MEASURE and demo.budget_mode == "adaptive"
    policy = parse_policy(BEST_POLICY)
    assert policy.name in demo.policies and policy.rate in demo.budgets
    args = build_parser().parse_args(["device", "run", "--server", "s", "--model", "m", "--user", "u", "--events", "e"])
    assert (args.fusion, args.alpha, args.llm_norm, args.srm_norm) == (
        BEST_FUSION.rule, BEST_FUSION.alpha, BEST_FUSION.llm_norm, BEST_FUSION.srm_norm)
    assert (args.measure, args.policy, args.data) == (None, BEST_POLICY, None)


def test_device_bench_needs_a_model(capsys):
    with pytest.raises(SystemExit) as info:
        main(["device", "bench"])
    assert info.value.code == 2 and "--model" in capsys.readouterr().err


def test_device_run_with_unreachable_cloud_keeps_going(onnx_dir, tmp_path, capsys):
    events = tmp_path / "events.txt"
    events.write_text("1\n2\n")
    code = main(["device", "run", "--server", "127.0.0.1:1", "--model", str(onnx_dir), "--user", "u", "--events",
                 str(events), "--timeout", "0.2", "--slate-size", "5", "--num-candidates", "12"])
    out = capsys.readouterr().out
    assert code == 0 and "FAILED" in out and "STALE" in out


def test_bad_events_file_names_the_line(tmp_path):
    from device.runtime.cli import read_events

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


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    """A tiny SASRec trained with `train srm --protocol cold --cold-seed 1` on a synthetic dataset."""
    import contextlib
    import io

    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    root = tmp_path_factory.mktemp("cold")
    write_dataset(synthetic_dataset(num_users=30, num_items=40, min_len=16, max_len=22), root / "data")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "srm", "--data", str(root / "data"), "--model", "sasrec", "--out", str(root / "run"),
                     "--config", "device/training/presets/tiny.toml", "--set", "train.epochs=1", "--protocol", "cold",
                     "--cold-seed", "1", "--json"])
    assert code == 0
    return root, json.loads(out.getvalue())


def _eval(cold_run, capsys, *extra):
    root, _ = cold_run
    code = main(["eval", "srm", "--data", str(root / "data"), "--ckpt", str(root / "run"), "--json", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_and_eval_srm_on_protocol_c(cold_run, capsys, tmp_path):
    from device.training.artifacts import load_checkpoint

    root, trained = cold_run
    assert trained["protocol"] == "cold" and trained["cold_seed"] == 1 and trained["cold_fraction"] == 0.1
    ckpt = load_checkpoint(root / "run")[1]
    assert (ckpt["protocol"], ckpt["cold_seed"], ckpt["cold_fraction"]) == ("cold", 1, 0.1)
    code, out, _ = _eval(cold_run, capsys, "--protocol", "cold", "--per-example", str(tmp_path / "pe.npz"))
    figures = json.loads(out)
    assert code == 0 and figures["seed"] == 1 and figures["protocol"] == "cold" and figures["model"] == "sasrec"
    assert figures["users"] == 30 and figures["cold_items"] == 4
    assert figures["all/users"] == sum(figures[f"{s}/users"] for s in ("cold", "tail", "warm"))
    assert 0 <= figures["cold/ndcg@10"] <= figures["cold/hr@10"] <= 1 and "warm/recall@50" in figures
    code, again, _ = _eval(cold_run, capsys, "--protocol", "cold", "--seed", "1")
    assert code == 0 and json.loads(again)["all/ndcg@10"] == figures["all/ndcg@10"]
    with np.load(tmp_path / "pe.npz") as saved:
        assert saved["ndcg10"].mean() == pytest.approx(figures["all/ndcg@10"])


@pytest.mark.parametrize("extra, names", [
    (["--protocol", "cold", "--seed", "0"], ["'seed' = 0", "cold_seed = 1"]),
    (["--protocol", "cold", "--cold-fraction", "0.2"], ["'cold_fraction' = 0.2", "cold_fraction = 0.1"]),
    (["--protocol", "cold-stream"], ["'protocol' = 'cold-stream'", "protocol 'cold'"]),
])
def test_eval_srm_refuses_another_cold_draw_in_one_line(cold_run, capsys, extra, names):
    code, out, err = _eval(cold_run, capsys, *extra)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert all(name in err for name in names), err


def test_checkpoints_without_cold_fields_still_load_and_are_refused_on_protocol_c(cold_run, capsys, tmp_path):
    import torch

    from device.training.artifacts import load_checkpoint, save_checkpoint

    root, _ = cold_run
    old = torch.load(root / "run" / "srm.pt", weights_only=True)
    for key in ("cold_seed", "cold_fraction"):
        del old[key]
    old["protocol"] = "loo"
    save_checkpoint(old, tmp_path / "old" / "srm.pt")
    load_checkpoint(tmp_path / "old")
    args = ["eval", "srm", "--data", str(root / "data"), "--ckpt", str(tmp_path / "old"), "--json"]
    assert main(args) == 0 and "ndcg@10" in json.loads(capsys.readouterr().out)
    assert main(args + ["--protocol", "cold"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "protocol 'loo'" in err and str(tmp_path / "old") in err


def test_training_tolerates_users_whose_prefix_is_all_cold(tiny_dataset):
    """without_items keeps such users with an empty prefix: training windows skip them, models score them."""
    from device.training.evaluate import evaluate, model_score_fn
    from device.training.models import build_model
    from device.training.train import TrainConfig, training_arrays
    from shared.data.cold import without_items
    from shared.data.splits import loo_split

    base = loo_split(tiny_dataset)
    split = without_items(base, np.unique(base.train[0]))  # user 1's whole prefix is cold
    assert len(split.train[0]) == 0 and len(split.train) == len(split.users)
    model = build_model("sasrec", {"num_items": tiny_dataset.num_items, "max_len": 8, "hidden": 16})
    histories, targets = training_arrays(model, split.train, TrainConfig(), np.random.default_rng(0))
    assert len(histories) == len(targets) > 0
    empty = type(split.valid)(split.valid.users[:1], (np.zeros(0, dtype=np.int64),), split.valid.targets[:1])
    assert evaluate(model_score_fn(model), empty, model.max_len, ks=(10,), rules=("removed",))["users"] == 1
