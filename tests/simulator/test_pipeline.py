"""`lsc4rec pipeline`: a user's CSV end to end (real server, gRPC replay, the demo's report), cached stages, and
bad data or options refused before anything is trained."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from simulator.cli import main
from simulator.pipeline_input import detect_format
from simulator.pipeline_options import add_model_options
from simulator.pipeline_plan import Commands
from shared.errors import LSC4RecError

# Tiny models and the quick grid: the whole chain in well under a minute on 2 cores.
TINY = ["--no-text", "--llm-preset", "tiny", "--llm-epochs", "2", "--srm-preset", "tiny", "--srm-epochs", "2",
        "--srm-set", "coop.epochs=1", "--sim-preset", "quick", "--seeds", "0"]


def write_csv(path: Path, users: int = 40, items: int = 120, title: bool = True, seed: int = 0) -> Path:
    """Users walk a ring of items with noise (18-26 interactions each, enough for protocol B's S = 10)."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,timestamp" + (",title" if title else "")]
    for user in range(1, users + 1):
        item = int(rng.integers(1, items + 1))
        for t in range(int(rng.integers(18, 27))):
            lines.append(f"u{user},i{item},{1_000_000 + 100 * t + user}" + (f",Item {item} ({1990 + item % 20})"
                                                                             if title else ""))
            step = 1 if rng.random() < 0.7 else int(rng.integers(2, 6))
            item = (item - 1 + step) % items + 1
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pipeline_end_to_end_on_a_csv(tmp_path, capsys):
    data, out = write_csv(tmp_path / "mine.csv"), tmp_path / "out"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY, "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # --json: one object on stdout, progress on stderr
    assert summary["report"] == str(out / "sim" / "report.md") and (out / "sim" / "report.md").is_file()
    assert json.loads((out / "pipeline.json").read_text())["grpc"] == summary["grpc"]
    # every user went through a gRPC device client against a real `lsc4rec cloud serve`, with the grid's answer
    assert summary["grpc"]["users"] == 40 and summary["grpc"]["same_as_inprocess"] is True
    assert (out / "logs" / "serve.log").is_file() and (out / "sim-grpc" / "metrics.json").is_file()
    assert summary["headline"][0]["system"].startswith("fusion + consistency requests")
    for artifact in ("data/meta.json", "llm/config.json", "srm-indep/onnx/manifest.json",
                     "srm-coop/onnx/manifest.json", "models/.published", "sim-indep/metrics.json"):
        assert (out / artifact).is_file(), artifact
    assert "[pipeline] train the tiny LLM" in captured.err and "[pipeline] read and prepare mine.csv" in captured.err

    # A re-run reuses the finished stages and refuses one made with other settings, before training anything.
    changed = [a if a != "2" or TINY[i - 1] != "--srm-epochs" else "3" for i, a in enumerate(TINY)]
    assert main(["pipeline", "--data", str(data), "--out", str(out), *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("train the tiny LLM: cached" in line for line in err)
    assert err[-1].startswith("lsc4rec: error: ") and "srm-indep" in err[-1] and "train.epochs=3" in err[-1]


def test_bad_data_exits_2_with_one_line_before_anything_is_written(tmp_path, capsys):
    data = write_csv(tmp_path / "mine.csv", users=5)
    lines = data.read_text().splitlines()
    lines[4] = "u1,i7,yesterday,Item 7 (1997)"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["pipeline", "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lsc4rec: error: ") and f"{data}:5" in err[0] and "'timestamp'" in err[0]
    assert not out.exists()  # no data folder, no model, no log


def test_too_little_data_is_refused_before_training(tmp_path, capsys):
    data = write_csv(tmp_path / "few.csv", users=3)
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:9]) + "\n")  # one user with 8 interactions: no stream of 10 fits
    out = tmp_path / "out"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lsc4rec: error: ") and str(data) in err[-1] and "stream_length" in err[-1]
    assert sorted(p.name for p in out.iterdir()) == ["data", "stages.json"]  # prepared, nothing trained


def _plan(out: str, *args: str):
    from simulator import demo

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    add_model_options(parser)
    return demo.plan(parser.parse_args(["--out", out, *args]))


def test_no_text_skips_the_embedding_and_trains_on_item_ids():
    plan = _plan("runs/x", "--no-text", "--srm-model", "gru4rec", "--srm-preset", "tiny", "--srm-set",
                 "train.lr=0.01", "--srm-set", "coop.epochs=1")
    cmd = Commands(plan)
    assert not cmd.grounded and plan.llm_preset == "compact" and "--vectors" not in cmd.train_llm
    assert cmd.train_indep[:9] == ["train", "srm", "--data", str(plan.data), "--model", "gru4rec", "--config", "tiny",
                                   "--out"]
    assert "train.lr=0.01" in cmd.train_indep and "train.lr=0.01" not in cmd.train_coop
    assert "coop.epochs=1" in cmd.train_coop and "coop.epochs=1" not in cmd.train_indep
    assert plan.srm_name == "GRU4Rec"


@pytest.mark.parametrize("args, says", [
    (["--srm-model", "nope"], "nope"),
    (["--srm-preset", "nope"], "--srm-preset"),
    (["--sim-preset", "quick", "--sim-set", "nope=1"], "nope"),
    (["--no-text", "--llm-preset", "compact-text"], "--no-text"),
    (["--seeds", "a,b"], "--seeds"),
    (["--format", "parquet"], "parquet"),
])
def test_bad_options_are_refused_before_any_stage(tmp_path, capsys, args, says):
    data, out = write_csv(tmp_path / "mine.csv", users=3), tmp_path / "out"
    assert main(["pipeline", "--data", str(data), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not out.exists()


def test_format_is_told_from_the_name(tmp_path):
    for name, fmt in (("a.csv", "csv"), ("a.tsv.gz", "csv"), ("x.inter", "recbole"), ("u.data", "movielens-100k-raw"),
                      ("ratings.dat", "movielens-1m")):
        (tmp_path / name).write_text("")
        assert detect_format(tmp_path / name) == fmt
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("")
    assert detect_format(folder) == "movielens-100k-raw"
    (tmp_path / "reviews.jsonl").write_text("")
    with pytest.raises(LSC4RecError, match="--format"):
        detect_format(tmp_path / "reviews.jsonl")
    with pytest.raises(LSC4RecError, match="no such file"):
        detect_format(tmp_path / "missing.csv")


def test_the_demo_is_the_pipeline_on_ml100k_with_its_settings(tmp_path):
    """`make demo` runs the same stage commands it always did (the pipeline's defaults are the demo's)."""
    from simulator import demo

    plan = _plan("runs/demo")
    cmd, data = Commands(plan), str(demo.DATA)
    assert plan.tag == "demo" and plan.summary_file == "demo.json" and plan.seeds == [0, 1, 2]
    assert cmd.embed == ["embed", "items", "--data", data, "--encoder", "smollm2-135m", "--out",
                         "runs/demo/item-vectors.npz"]
    assert cmd.train_llm == ["train", "llm", "--data", data, "--preset", "compact-text", "--vectors",
                             "runs/demo/item-vectors.npz", "--out", "runs/demo/llm", "--set", "train.epochs=30"]
    assert cmd.train_indep == ["train", "srm", "--data", data, "--model", "sasrec", "--out", "runs/demo/srm-indep",
                               "--set", "train.epochs=20"]
    assert cmd.train_coop == ["train", "srm", "--data", data, "--model", "sasrec", "--coop", "--resume",
                              "runs/demo/srm-indep/srm.pt", "--generator", "llm:runs/demo/llm",
                              "--out", "runs/demo/srm-coop"]
    assert cmd.export(cmd.coop) == ["export", "srm", "--ckpt", "runs/demo/srm-coop", "--format", "onnx,user-encoder",
                                    "--data", data, "--out", "runs/demo/srm-coop"]
