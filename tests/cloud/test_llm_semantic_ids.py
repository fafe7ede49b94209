"""Item tokenizer: unique codes for every item, a consistent trie, a versioned index tied to its catalogue."""
from __future__ import annotations

import numpy as np
import pytest

from cloud.llm.semantic_ids import (INDEX_NAME, NUM_SPECIAL, ItemIndex, TokenizerConfig, atomic_index,
                                    build_index, kmeans, semantic_index)
from shared.errors import CatalogMismatchError, ConfigError, EmptyDatasetError, ManifestError
from tests.conftest import synthetic_dataset


def _semantic(ds, levels=2, size=4, seed=0):
    emb = np.random.default_rng(seed).normal(size=(ds.num_items, 8))
    return semantic_index(ds.items, emb, TokenizerConfig(kind="semantic", levels=levels, codebook_size=size))


def test_every_item_gets_a_unique_code_within_its_level_ranges():
    ds = synthetic_dataset(num_items=60)
    index = _semantic(ds)
    assert index.codes.shape == (60, 3)
    assert len({tuple(r) for r in index.codes.tolist()}) == 60
    for level, (off, size) in enumerate(zip(index.offsets, index.sizes)):
        assert ((index.codes[:, level] >= off) & (index.codes[:, level] < off + size)).all()
    assert index.vocab_size == NUM_SPECIAL + sum(index.sizes)


def test_identical_embeddings_are_disambiguated_by_the_last_level():
    ds = synthetic_dataset(num_items=12)
    emb = np.ones((12, 4))  # every item collides on the cluster levels (cold-start-like ties)
    index = semantic_index(ds.items, emb, TokenizerConfig(kind="semantic", levels=2, codebook_size=3))
    assert index.sizes[-1] == 12
    assert len({tuple(r) for r in index.codes.tolist()}) == 12


def test_trie_walk_reaches_each_item_exactly_once():
    ds = synthetic_dataset(num_items=60)
    index = _semantic(ds, levels=3, size=3)
    for item in range(1, 61):
        node = 0
        for level in range(index.depth):
            code = index.codes[item - 1, level] - index.offsets[level]
            node = index.child[level][node, code]
            assert node >= 0
        assert node == item
    assert index.leaves[0][0] == 60


def test_atomic_index_is_one_token_per_item():
    ds = synthetic_dataset(num_items=30)
    index = atomic_index(ds.items)
    assert index.depth == 1 and index.sizes == (30,)
    assert index.tokens([1, 30]).tolist() == [NUM_SPECIAL, NUM_SPECIAL + 29]


def test_save_load_round_trip_and_catalogue_check(tmp_path):
    ds = synthetic_dataset(num_items=40)
    index = _semantic(ds)
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert np.array_equal(loaded.codes, index.codes) and loaded.catalog_hash == ds.vocab_hash
    loaded.check_catalog(ds.items)
    other = synthetic_dataset(num_items=41)
    with pytest.raises(CatalogMismatchError):
        loaded.check_catalog(other.items)


def test_index_with_a_wrong_version_is_refused(tmp_path):
    ds = synthetic_dataset(num_items=10)
    atomic_index(ds.items).save(tmp_path)
    text = (tmp_path / INDEX_NAME).read_text().replace('"version": 1', '"version": 99')
    (tmp_path / INDEX_NAME).write_text(text)
    with pytest.raises(ManifestError, match="version"):
        ItemIndex.load(tmp_path)


def test_empty_catalogue_is_refused():
    with pytest.raises(EmptyDatasetError):
        atomic_index(())
    with pytest.raises(EmptyDatasetError):
        semantic_index((), np.zeros((0, 4)), TokenizerConfig(kind="semantic"))


def test_bad_tokenizer_config_names_the_key():
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        TokenizerConfig(kind="words")


def test_build_index_uses_injected_embeddings_without_the_encoder():
    ds = synthetic_dataset(num_items=20)
    emb = np.random.default_rng(1).normal(size=(20, 8))
    index = build_index(ds.items, TokenizerConfig(kind="semantic", levels=1, codebook_size=4), embeddings=emb)
    assert index.kind == "semantic" and index.depth == 2


def test_kmeans_separates_obvious_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.01, (20, 2)), rng.normal(5, 0.01, (20, 2))])
    _, assign = kmeans(x, 2, 10, rng)
    assert len(set(assign[:20])) == 1 and len(set(assign[20:])) == 1 and assign[0] != assign[-1]
