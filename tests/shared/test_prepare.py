"""`lsc4rec data prepare` end to end: every format through the CLI, bad input, atomic output, idempotence."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import shared.data.dataset as dataset_module
from shared.data.dataset import load_dataset
from shared.data.prepare import ML100K_SHA256
from simulator.cli import main
from tests.shared.test_formats import SAMPLES, write_sample

COUNTS = {  # users, items (catalogue: unreviewed meta items are dropped, u.item items kept), interactions
    "movielens-100k-raw": (2, 3, 3), "movielens-1m": (2, 2, 3), "recbole": (2, 2, 3),
    "amazon-2018": (2, 2, 3), "amazon-2023": (2, 2, 3), "csv": (2, 2, 3),
}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["data", "prepare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", sorted(COUNTS))
def test_prepare_every_format_twice_gives_identical_files(tmp_path, capsys, fmt, gz):
    source = write_sample(tmp_path / "src", fmt, gz=gz)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "--dataset", fmt, "--input", str(source), "--out", str(out), "--json")
    assert code == 0, err
    figures = json.loads(stdout)
    assert (figures["users"], figures["items"], figures["interactions"]) == COUNTS[fmt]
    assert figures["dataset"] == fmt and figures["vocab_hash"] == load_dataset(out).vocab_hash
    first = tree_digest(out)
    assert set(first) == {"interactions.tsv", "items.tsv", "users.tsv", "meta.json"}
    assert run_cli(capsys, "--dataset", fmt, "--input", str(source), "--out", str(out), "--json")[0] == 0
    assert tree_digest(out) == first
    assert leftovers(tmp_path, "out") == ["out"]


def test_prepared_items_carry_titles_and_text(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "movielens-100k-raw")
    argv = ["--dataset", "movielens-100k-raw", "--input", str(source), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    data = load_dataset(tmp_path / "o")
    assert [item.raw_id for item in data.items] == ["10", "20", "30"]
    assert data.items[1].text == "Cité des enfants perdus, La (1995) - Fantasy, Sci-Fi"
    assert data.interactions[:, 0].tolist() == [1, 1, 2] and data.interactions[:, 1].tolist() == [1, 2, 1]


def test_human_readable_output(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "csv")
    code, stdout, _ = run_cli(capsys, "--dataset", "csv", "--input", str(source), "--out", str(tmp_path / "o"))
    assert code == 0 and stdout.startswith(f"wrote {tmp_path / 'o'}") and "interactions" in stdout


def test_k_core_option(tmp_path, capsys):
    rows = ["user,item,timestamp"] + [f"u{u},i{i},{10 * u + i}" for u in range(1, 4) for i in range(1, 4)]
    source = tmp_path / "data.csv"
    source.write_text("\n".join(rows + ["u9,i1,1", "u1,i9,2"]) + "\n")
    code, stdout, _ = run_cli(capsys, "--dataset", "csv", "--input", str(source), "--out", str(tmp_path / "o"),
                              "--k-core", "2", "--json")
    assert code == 0
    assert {k: json.loads(stdout)[k] for k in ("users", "items", "interactions")} == \
        {"users": 3, "items": 3, "interactions": 9}
    assert load_dataset(tmp_path / "o").meta["k_core"] == 2


def assert_one_line_error(code: int, stdout: str, err: str, *fragments: str) -> None:
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsc4rec: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_bad_data_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "movielens-1m",
                          {**SAMPLES["movielens-1m"], "ratings.dat": b"1::2::5::978300760\n1::3::5::x\n"})
    out = tmp_path / "out"
    result = run_cli(capsys, "--dataset", "movielens-1m", "--input", str(source), "--out", str(out))
    assert_one_line_error(*result, f"{source / 'ratings.dat'}:2:", "field 'timestamp'", "'x' is not a number")
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("argv, fragments", [
    (["--dataset", "ml-10m"], ["--dataset = 'ml-10m'", "not a known dataset", "movielens-1m"]),
    (["--dataset", "csv"], ["--input", "give --input PATH"]),
    (["--dataset", "csv", "--input", "/nonexistent/x.csv"], ["/nonexistent/x.csv", "file not found"]),
    (["--dataset", "csv", "--k-core", "-1", "--input", "x"], ["--k-core = -1"]),
])
def test_bad_arguments(tmp_path, capsys, argv, fragments):
    result = run_cli(capsys, *argv, "--out", str(tmp_path / "out"))
    assert_one_line_error(*result, *fragments)
    assert leftovers(tmp_path, "out") == []


def test_empty_after_k_core(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "csv")
    result = run_cli(capsys, "--dataset", "csv", "--input", str(source), "--out", str(tmp_path / "out"),
                     "--k-core", "5", "--json")
    assert_one_line_error(*result, str(source), "no interactions left (k_core=5)")
    assert leftovers(tmp_path, "out") == []


def test_wrong_checksum(tmp_path, capsys):
    source = tmp_path / "ml"
    source.mkdir()
    for name in ML100K_SHA256:
        (source / name).write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    result = run_cli(capsys, "--dataset", "ml-100k", "--input", str(source), "--out", str(tmp_path / "out"))
    assert_one_line_error(*result, str(source / "ml-100k.inter"), "does not match the expected",
                          ML100K_SHA256["ml-100k.inter"])
    for name in ML100K_SHA256:
        (source / name).unlink()
    result = run_cli(capsys, "--dataset", "ml-100k", "--input", str(source), "--out", str(tmp_path / "out"))
    assert_one_line_error(*result, str(source / "ml-100k.inter"), "missing")
    assert leftovers(tmp_path, "out") == []


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "csv")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = run_cli(capsys, "--dataset", "csv", "--input", str(source), "--out", str(precious))
    assert_one_line_error(*result, "--out", "not a dataset folder")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_failure_while_writing_leaves_no_half_written_output(tmp_path, capsys, monkeypatch):
    source = write_sample(tmp_path / "src", "csv")
    out = tmp_path / "out"

    def boom(value: str) -> str:  # fails after interactions.tsv was written into the temporary folder
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset_module, "_clean", boom)
    with pytest.raises(OSError, match="No space left"):
        main(["data", "prepare", "--dataset", "csv", "--input", str(source), "--out", str(out)])
    assert leftovers(tmp_path, "out") == []

    monkeypatch.undo()  # a good dataset is written, then a failing rewrite must leave it untouched
    assert run_cli(capsys, "--dataset", "csv", "--input", str(source), "--out", str(out))[0] == 0
    before = tree_digest(out)
    monkeypatch.setattr(dataset_module, "_clean", boom)
    with pytest.raises(OSError):
        main(["data", "prepare", "--dataset", "recbole", "--input", str(write_sample(tmp_path / "rb", "recbole")),
              "--out", str(out)])
    assert tree_digest(out) == before and leftovers(tmp_path, "out") == ["out"]


def test_stats_of_a_prepared_folder(tmp_path, capsys):
    source = write_sample(tmp_path / "src", "amazon-2018")
    assert run_cli(capsys, "--dataset", "amazon-2018", "--input", str(source), "--out", str(tmp_path / "o"))[0] == 0
    assert main(["data", "stats", "--data", str(tmp_path / "o"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["users"], figures["items"], figures["interactions"]) == COUNTS["amazon-2018"]


@pytest.mark.slow
def test_real_ml100k_prepare_fetches_and_counts(tmp_path, capsys):
    """Fetches recbole==1.2.1 from PyPI, checks the sha256s and the published counts; twice, identical."""
    out = tmp_path / "ml-100k"
    code, stdout, err = run_cli(capsys, "--dataset", "ml-100k", "--out", str(out), "--json")
    assert code == 0, err
    figures = json.loads(stdout)
    assert (figures["users"], figures["items"], figures["interactions"]) == (943, 1682, 100000)
    first = tree_digest(out)
    assert run_cli(capsys, "--dataset", "ml-100k", "--out", str(out), "--json")[0] == 0
    assert tree_digest(out) == first
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sha256"] == ML100K_SHA256 and "never stored" in meta["licence"]


def test_holdout_drops_each_users_last_interactions_and_keeps_the_vocabulary(tmp_path, capsys):
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    source = write_dataset(synthetic_dataset(num_users=6, num_items=30, min_len=5, max_len=9), tmp_path / "d")
    original = load_dataset(source)
    code = main(["data", "holdout", "--data", str(source), "--drop-last", "3", "--out", str(tmp_path / "v"), "--json"])
    out = json.loads(capsys.readouterr().out)
    held = load_dataset(tmp_path / "v")
    assert code == 0 and out["dropped"] == 3 * original.num_users
    assert [s.tolist() for s in held.sequences()] == [s[:-3].tolist() for s in original.sequences()]
    assert held.vocab_hash == original.vocab_hash == out["vocab_hash"] and held.users == original.users
    assert held.meta["dropped_last"] == 3 and held.meta["interactions"] == len(held.interactions)
    assert load_dataset(source).interactions.shape == original.interactions.shape  # the original is untouched


@pytest.mark.parametrize("argv, fragment", [(["--drop-last", "0"], "--drop-last"), (["--same-out"], "--out"),
                                            (["--drop-last", "100"], "no interaction is left")])
def test_holdout_bad_arguments_name_the_option(tmp_path, capsys, argv, fragment):
    from shared.data.dataset import write_dataset
    from tests.conftest import synthetic_dataset

    source = write_dataset(synthetic_dataset(num_users=3, num_items=30, min_len=5, max_len=9), tmp_path / "d")
    out = source if argv == ["--same-out"] else tmp_path / "v"
    extra = [] if argv == ["--same-out"] else argv
    code = main(["data", "holdout", "--data", str(source), "--out", str(out), *extra])
    assert_one_line_error(code, *capsys.readouterr(), fragment)
    assert not (tmp_path / "v").exists()
