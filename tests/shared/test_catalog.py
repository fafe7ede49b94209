"""Catalogue growth: B extends A only by appending; refusals name the file, the line of the first offending item and
the field."""
import pytest

from shared.data.catalog import CatalogRef, check_extends, raw_vocab_hash, read_raw_ids, write_raw_ids
from shared.data.dataset import vocab_hash
from shared.errors import DataFormatError
from tests.conftest import synthetic_dataset

BASE = ("a", "b", "c")


def test_the_raw_id_hash_is_the_datasets_vocab_hash():
    ds = synthetic_dataset(num_items=12)
    ref = CatalogRef.of(ds.items)
    assert ref.vocab_hash == ds.vocab_hash == raw_vocab_hash([i.raw_id for i in ds.items]) and ref.num_items == 12
    assert vocab_hash(ref.items()) == ds.vocab_hash


@pytest.mark.parametrize("keep_ids", [True, False])
def test_appending_counts_the_new_items_and_the_same_catalogue_adds_none(keep_ids):
    base = CatalogRef.of(BASE) if keep_ids else CatalogRef(raw_vocab_hash(BASE), 3)
    assert check_extends(base, BASE + ("d", "e"), "grown/items.tsv") == 2
    assert check_extends(base, BASE, "grown/items.tsv") == 0


@pytest.mark.parametrize("keep_ids", [True, False])
def test_a_shrunk_catalogue_is_refused(keep_ids):
    base = CatalogRef.of(BASE) if keep_ids else CatalogRef(raw_vocab_hash(BASE), 3)
    with pytest.raises(DataFormatError, match=r"grown/items.tsv: field 'item': 2 items, fewer than the 3.*item 3 is "
                                              r"missing") as info:
        check_extends(base, ("a", "b"), "grown/items.tsv")
    assert info.value.field == "item"


def test_a_reordered_catalogue_names_the_first_moved_item_and_its_line():
    with pytest.raises(DataFormatError, match=r"grown/items.tsv:3: field 'raw_id': item 2 is 'c' but was 'b'") as info:
        check_extends(CatalogRef.of(BASE), ("a", "c", "b", "d"), "grown/items.tsv")
    assert info.value.line == 3 and info.value.field == "raw_id"


def test_without_raw_ids_a_reordered_catalogue_is_refused_by_its_hash():
    with pytest.raises(DataFormatError, match=r"field 'raw_id': items 1..3 have vocab hash .* changed or reordered"):
        check_extends(CatalogRef(raw_vocab_hash(BASE), 3), ("a", "c", "b", "d"), "grown/items.tsv")


def test_a_new_item_that_repeats_an_existing_raw_id_is_refused():
    with pytest.raises(DataFormatError, match=r"items.tsv:5: field 'raw_id': new item 4 is 'b', already item 2"):
        check_extends(CatalogRef.of(BASE), BASE + ("b",), "items.tsv")
    with pytest.raises(DataFormatError, match=r"items.tsv:6: field 'raw_id': new item 5 is 'x', already item 4"):
        check_extends(CatalogRef.of(BASE), BASE + ("x", "x"), "items.tsv")


def test_raw_ids_round_trip_through_the_folder_file(tmp_path):
    assert read_raw_ids(tmp_path) is None
    write_raw_ids(tmp_path, synthetic_dataset(num_items=5).items)
    assert read_raw_ids(tmp_path) == ("1", "2", "3", "4", "5")
