"""Baselines rank a tiny catalogue in a known order; item vector files are checked against the catalogue."""
import json

import numpy as np
import pytest

from shared.baselines import baseline_score_fn, popularity_score_fn, text_knn_score_fn
from shared.data.splits import Examples
from shared.errors import CatalogMismatchError, ConfigError, DataFormatError, InvalidArgumentError
from shared.item_vectors import load_item_vectors, save_item_vectors
from shared.ranking import rank_examples

# Five items on the unit circle at 0, 30, 60, 90 and 180 degrees: cosine order from any angle is known.
ANGLES = np.radians([0, 30, 60, 90, 180])
VECTORS = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1) * np.array([[1], [2], [3], [0.5], [4]])  # norms vary


def _examples(histories, targets):
    return Examples(np.arange(1, len(targets) + 1), tuple(np.asarray(h, dtype=np.int64) for h in histories),
                    np.asarray(targets, dtype=np.int64))


def test_popularity_ranks_by_training_counts():
    counts = np.array([0, 5, 9, 1, 7, 3])  # order 2, 4, 1, 5, 3
    score = popularity_score_fn(counts)
    assert score([np.array([1])]).shape == (1, 6) and score([[1]])[0, 0] == -np.inf
    ranks = rank_examples(score, _examples([[2], [2], [1]], [4, 3, 2]), max_len=1)
    # Seen items are removed: user 1 has seen item 2, so item 4 comes first; item 3 is last of the 4 left.
    assert ranks.tolist() == [0, 3, 0]


def test_text_knn_ranks_by_cosine_to_the_recent_mean():
    score = text_knn_score_fn(VECTORS, recent=2)
    # History [1, 2] (0 and 30 degrees): mean direction 15 degrees -> order 1, 2, 3, 4, 5.
    row = score([np.array([1, 2])])[0]
    assert np.argsort(-row[1:]).tolist() == [0, 1, 2, 3, 4] and row[0] == -np.inf
    assert row[1] == pytest.approx(np.cos(np.radians(15)))  # cosine, whatever the vectors' norms
    # Only the last `recent` items count: [5, 3, 4] with recent=2 looks at 60 and 90 degrees (75).
    ranks = rank_examples(score, _examples([[5, 3, 4]], [2]), max_len=2)
    assert ranks.tolist() == [0]  # 30 degrees is the nearest unseen item to 75 (5 is seen, 1 is 75 away)


def test_text_knn_reads_lists_and_padded_arrays_alike_and_decays():
    score = text_knn_score_fn(VECTORS, recent=3, decay=0.5)
    padded = np.array([[0, 0, 1, 4], [0, 0, 0, 0]])
    listed = [np.array([1, 4]), np.array([], dtype=np.int64)]
    assert np.array_equal(score(padded), score(listed))
    assert (score(listed)[1, 1:] == 0).all()  # an empty history scores every item 0
    # With decay 0.5 the most recent item (4, 90 degrees) weighs twice item 1 (0 degrees): 3 beats 2.
    row = score([np.array([1, 4])])[0]
    assert row[3] > row[2]
    assert text_knn_score_fn(VECTORS, recent=3)([np.array([1, 4])])[0, 2] == pytest.approx(
        text_knn_score_fn(VECTORS, recent=3)([np.array([1, 4])])[0, 3])  # the plain mean: 45 degrees, a tie


@pytest.mark.parametrize("kwargs, key", [({"recent": 0}, "recent"), ({"decay": 0.0}, "decay"),
                                         ({"decay": 1.5}, "decay")])
def test_text_knn_refuses_bad_settings(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        text_knn_score_fn(VECTORS, **kwargs)


def test_baseline_score_fn_needs_vectors_for_text_knn():
    with pytest.raises(ConfigError, match="vectors"):
        baseline_score_fn("text-knn", np.zeros(6))
    with pytest.raises(ConfigError, match="kind"):
        baseline_score_fn("random", np.zeros(6))


def test_item_vectors_round_trip_and_checks(tiny_dataset, tmp_path):
    n = tiny_dataset.num_items
    vectors = np.random.default_rng(0).normal(size=(n, 4))
    path = save_item_vectors(tmp_path / "v.npz", vectors, {"vocab_hash": tiny_dataset.vocab_hash, "num_items": n,
                                                            "model": "test"})
    loaded = load_item_vectors(path, tiny_dataset)
    assert loaded.dtype == np.float32 and np.allclose(loaded, vectors, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["v.npz"]  # no temp file left
    with pytest.raises(DataFormatError, match="missing.npz"):
        load_item_vectors(tmp_path / "missing.npz", tiny_dataset)
    save_item_vectors(tmp_path / "other.npz", vectors, {"vocab_hash": "0123456789abcdef", "num_items": n})
    with pytest.raises(CatalogMismatchError, match="other.npz"):
        load_item_vectors(tmp_path / "other.npz", tiny_dataset)
    np.savez(tmp_path / "short.npz", vectors=vectors[:-1],
             meta=np.asarray(json.dumps({"vocab_hash": tiny_dataset.vocab_hash, "num_items": n})))
    with pytest.raises(DataFormatError, match="'vectors'.*rows"):
        load_item_vectors(tmp_path / "short.npz", tiny_dataset)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataFormatError, match="junk.npz"):
        load_item_vectors(tmp_path / "junk.npz", tiny_dataset)
    with pytest.raises(InvalidArgumentError, match="meta.vocab_hash"):
        save_item_vectors(tmp_path / "x.npz", vectors, {"num_items": n})


def _cli(argv, capsys):
    from simulator.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data_dir(tiny_dataset, tmp_path):
    from shared.data.dataset import write_dataset

    return write_dataset(tiny_dataset, tmp_path / "data")


@pytest.mark.parametrize("protocol", ["loo", "cold", "cold-stream"])
def test_cli_eval_baseline_prints_sliced_figures(data_dir, tiny_dataset, tmp_path, capsys, protocol):
    save_item_vectors(tmp_path / "v.npz", np.random.default_rng(1).normal(size=(tiny_dataset.num_items, 3)),
                      {"vocab_hash": tiny_dataset.vocab_hash, "num_items": tiny_dataset.num_items})
    for kind in ("popularity", "text-knn"):
        code, out, _ = _cli(["eval", "baseline", "--data", str(data_dir), "--kind", kind, "--vectors",
                             str(tmp_path / "v.npz"), "--protocol", protocol, "--seed", "2", "--json",
                             "--per-example", str(tmp_path / f"{kind}.npz")], capsys)
        figures = json.loads(out)
        assert code == 0 and figures["model"] == kind and figures["protocol"] == protocol
        assert figures["cold_items"] == (0 if protocol == "loo" else 6)
        assert figures["users"] == figures["all/users"] == sum(figures[f"{s}/users"] for s in ("cold", "tail", "warm"))
        assert {"all/hr@10", "cold/ndcg@10", "warm/recall@50", "tail/users"} <= set(figures)
        with np.load(tmp_path / f"{kind}.npz") as saved:
            assert len(saved["ndcg10"]) == figures["users"]
            assert saved["ndcg10"].mean() == pytest.approx(figures["all/ndcg@10"])


@pytest.mark.parametrize("vectors, names", [("missing.npz", "missing.npz"), ("other.npz", "other.npz"),
                                            (None, "--vectors")])
def test_cli_eval_baseline_refuses_bad_vectors_in_one_line(data_dir, tiny_dataset, tmp_path, capsys, vectors, names):
    save_item_vectors(tmp_path / "other.npz", np.ones((tiny_dataset.num_items, 2)),
                      {"vocab_hash": "another-catalog", "num_items": tiny_dataset.num_items})
    argv = ["eval", "baseline", "--data", str(data_dir), "--kind", "text-knn", "--json"]
    argv += [] if vectors is None else ["--vectors", str(tmp_path / vectors)]
    code, out, err = _cli(argv, capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and names in err


def test_cli_eval_baseline_refuses_a_bad_fraction(data_dir, capsys):
    code, _, err = _cli(["eval", "baseline", "--data", str(data_dir), "--kind", "popularity", "--cold-fraction",
                         "1.2"], capsys)
    assert code == 2 and "cold_fraction" in err and len(err.strip().splitlines()) == 1
