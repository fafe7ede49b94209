"""Dataset format: dense ids, round trip, stable sorting, atomic writes, popularity stand-in."""
import numpy as np
import pytest

from shared.data.dataset import build_dataset, load_dataset, write_dataset, RawItem
from shared.errors import DataFormatError, EmptyDatasetError, InvalidArgumentError, UnknownItemError
from shared.generator import PopularityGenerator


def test_round_trip(tmp_path, tiny_dataset):
    write_dataset(tiny_dataset, tmp_path / "d")
    loaded = load_dataset(tmp_path / "d")
    assert np.array_equal(loaded.interactions, tiny_dataset.interactions)
    assert loaded.items == tiny_dataset.items and loaded.users == tiny_dataset.users
    assert loaded.vocab_hash == tiny_dataset.vocab_hash
    assert loaded.meta["interactions"] == len(tiny_dataset.interactions)


def test_catalogue_items_without_interactions_keep_an_id():
    items = {"x": RawItem("x", "X"), "y": RawItem("y", "Y (cold)")}
    data = build_dataset([("u", "x", 1)], items)
    assert [i.raw_id for i in data.items] == ["x", "y"] and data.num_items == 2


def test_k_core_and_empty():
    events = [("a", "1", 1), ("a", "2", 2), ("b", "1", 3), ("b", "2", 4), ("c", "3", 5)]
    assert build_dataset(events, k_core=2).num_users == 2
    with pytest.raises(EmptyDatasetError):
        build_dataset(events, k_core=5)


def test_load_refuses_missing_and_out_of_range(tmp_path, tiny_dataset):
    with pytest.raises(DataFormatError, match="missing"):
        load_dataset(tmp_path / "nothing")
    write_dataset(tiny_dataset, tmp_path / "d")
    path = tmp_path / "d" / "interactions.tsv"
    path.write_text(path.read_text() + f"1\t{tiny_dataset.num_items + 1}\t5\n")
    with pytest.raises(DataFormatError, match="item"):
        load_dataset(tmp_path / "d")


def test_popularity_generator_contract(tiny_dataset):
    gen = PopularityGenerator.from_sequences(tiny_dataset.sequences(), tiny_dataset.num_items)
    (row,) = gen.generate([[1, 2, 3]], n=10, excludes=[[4]])
    items = [c.item for c in row]
    assert len(set(items)) == 10 and not {1, 2, 3, 4} & set(items)
    assert [c.score for c in row] == sorted((c.score for c in row), reverse=True)
    assert len(gen.generate([[]], n=5)[0]) == 5  # a new user gets a list
    with pytest.raises(UnknownItemError):
        gen.generate([[0]], n=5)
    with pytest.raises(InvalidArgumentError, match="n"):
        gen.generate([[]], n=tiny_dataset.num_items + 1)
