"""LLMGenerator: exactly n distinct valid unseen items, exact beam search, batching, typed errors."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.llm.generate import LLMGenerator
from cloud.llm.model import build_model
from cloud.llm.train import load_llm_config
from cloud.llm.semantic_ids import BOS, TokenizerConfig, atomic_index, build_index
from shared.errors import InvalidArgumentError, UnknownItemError
from tests.conftest import synthetic_dataset

NUM_ITEMS = 60


def _generator(kind: str, beam_width: int = 0, batch_size: int = 64) -> LLMGenerator:
    import torch

    torch.set_num_threads(1)
    ds = synthetic_dataset(num_items=NUM_ITEMS)
    emb = np.random.default_rng(0).normal(size=(NUM_ITEMS, 8))
    index = build_index(ds.items, TokenizerConfig(kind=kind, levels=2, codebook_size=4), embeddings=emb)
    config = dataclasses.replace(load_llm_config("tiny").model, max_history=12)
    model = build_model(config, index.vocab_size, index.depth, seed=0)
    return LLMGenerator(model, index, config.max_history, beam_width=beam_width, batch_size=batch_size)


@pytest.fixture(scope="module", params=["atomic", "semantic"])
def generator(request) -> LLMGenerator:
    return _generator(request.param)


def _sequence_logprobs(gen: LLMGenerator, history: list[int]) -> np.ndarray:
    """Brute force: log P(item | history) for every item by teacher forcing its whole code."""
    import torch

    index = gen.index
    prefix = np.concatenate([[BOS], index.tokens(history[-gen.max_history:])]) if history else np.asarray([BOS])
    rows = np.stack([np.concatenate([prefix, index.codes[i]]) for i in range(index.num_items)])
    with torch.inference_mode():
        logp = torch.log_softmax(gen.model(input_ids=torch.from_numpy(rows)).logits.float(), -1)
    depth, start = index.depth, len(prefix) - 1
    picked = [logp[:, start + l].gather(1, torch.from_numpy(index.codes[:, l:l + 1])).squeeze(1) for l in range(depth)]
    return torch.stack(picked, 1).sum(1).numpy()


def _check(rows, histories, excludes, n, num_items):
    assert len(rows) == len(histories)
    for row, history, exclude in zip(rows, histories, excludes):
        items = [c.item for c in row]
        assert len(items) == n and len(set(items)) == n
        assert all(1 <= i <= num_items for i in items)
        assert not set(items) & (set(history) | set(exclude))
        scores = [c.score for c in row]
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_outputs_are_always_valid_distinct_and_unseen(generator, data):
    batch = data.draw(st.integers(1, 4))
    item = st.integers(1, NUM_ITEMS)
    histories = [data.draw(st.lists(item, max_size=25)) for _ in range(batch)]
    excludes = [data.draw(st.lists(item, max_size=15)) for _ in range(batch)]
    room = min(NUM_ITEMS - len(set(h) | set(e)) for h, e in zip(histories, excludes))
    n = data.draw(st.integers(1, room))
    rows = generator.generate(histories, n, excludes)
    _check(rows, histories, excludes, n, NUM_ITEMS)


def test_atomic_top_n_is_the_exact_masked_softmax_order():
    gen = _generator("atomic")
    history = [3, 4, 5, 9]
    expected = _sequence_logprobs(gen, history)
    expected[np.asarray(history) - 1] = -np.inf
    row = gen.generate([history], 10)[0]
    assert [c.item for c in row] == list(np.argsort(-expected, kind="stable")[:10] + 1)
    assert np.allclose([c.score for c in row], np.sort(expected)[::-1][:10], atol=1e-4)


def test_wide_semantic_beam_equals_brute_force_enumeration():
    gen = _generator("semantic", beam_width=NUM_ITEMS)  # every prefix kept: the search is exhaustive
    history = [10, 11, 12, 14]
    expected = _sequence_logprobs(gen, history)
    expected[np.asarray(history) - 1] = -np.inf
    row = gen.generate([history], 20)[0]
    assert [c.item for c in row] == list(np.argsort(-expected, kind="stable")[:20] + 1)
    assert np.allclose([c.score for c in row], np.sort(expected)[::-1][:20], atol=1e-4)


def test_scores_are_sequence_log_probabilities_under_a_narrow_beam(generator):
    history = [1, 2, 3]
    expected = _sequence_logprobs(generator, history)
    row = generator.generate([history], 5)[0]
    assert np.allclose([c.score for c in row], [expected[c.item - 1] for c in row], atol=1e-4)


def test_a_batch_gives_the_same_lists_as_single_requests(generator):
    seqs = synthetic_dataset(num_items=NUM_ITEMS).sequences()
    histories = [list(seqs[0][:3]), list(seqs[1][:20]), [], list(seqs[2][:1])]
    together = generator.generate(histories, 8)
    for history, row in zip(histories, together):
        alone = generator.generate([history], 8)[0]
        assert [c.item for c in alone] == [c.item for c in row]
        assert np.allclose([c.score for c in alone], [c.score for c in row], atol=1e-4)


def test_small_internal_batches_match_one_batch():
    histories = [[1, 2], [5], [], [7, 8, 9]]
    one = _generator("semantic", batch_size=64).generate(histories, 6)
    many = _generator("semantic", batch_size=1).generate(histories, 6)
    assert [[c.item for c in r] for r in one] == [[c.item for c in r] for r in many]


def test_zero_history_returns_a_full_list(generator):
    _check(generator.generate([[]], 50), [[]], [[]], 50, NUM_ITEMS)


def test_the_whole_remaining_catalogue_can_be_asked_for(generator):
    history, exclude = list(range(1, 21)), list(range(30, 41))
    n = NUM_ITEMS - len(set(history) | set(exclude))
    _check(generator.generate([history], n, [exclude]), [history], [exclude], n, NUM_ITEMS)


def test_history_longer_than_max_history_is_truncated_not_refused(generator):
    history = list(range(1, 41))
    assert generator.max_history == 12
    _check(generator.generate([history], 5), [history], [[]], 5, NUM_ITEMS)


@pytest.mark.parametrize("histories,n,excludes,error,field", [
    ([[0]], 5, None, UnknownItemError, "histories[0]"),
    ([[NUM_ITEMS + 1]], 5, None, UnknownItemError, "histories[0]"),
    ([[1]], 5, [[-3]], UnknownItemError, "excludes[0]"),
    ([[1]], 0, None, InvalidArgumentError, "n"),
    ([[1]], -2, None, InvalidArgumentError, "n"),
    ([[1, 2]], NUM_ITEMS - 1, None, InvalidArgumentError, "n"),
    ([[1]], 5, [[2], [3]], InvalidArgumentError, "excludes"),
])
def test_bad_input_raises_a_typed_error_naming_the_field(generator, histories, n, excludes, error, field):
    with pytest.raises(error) as info:
        generator.generate(histories, n, excludes)
    assert info.value.field.startswith(field)


def test_empty_catalogue_cannot_make_a_generator():
    from shared.errors import EmptyDatasetError

    with pytest.raises(EmptyDatasetError):
        atomic_index(())


def test_protocol_attributes(generator):
    assert generator.num_items == NUM_ITEMS and isinstance(generator.version, str) and generator.max_history == 12


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("kind", ["atomic", "semantic"])
def test_last_position_prompt_pass_gives_the_lists_of_the_full_forward(arch, kind):
    """The prompt pass computes the last layer at the last position only (llama-style models): same lists."""
    import torch

    torch.set_num_threads(1)
    ds = synthetic_dataset(num_items=NUM_ITEMS)
    emb = np.random.default_rng(0).normal(size=(NUM_ITEMS, 8))
    index = build_index(ds.items, TokenizerConfig(kind=kind, levels=2, codebook_size=4), embeddings=emb)
    config = dataclasses.replace(load_llm_config("tiny").model, arch=arch, max_history=12)
    gen = LLMGenerator(build_model(config, index.vocab_size, index.depth, seed=1), index, config.max_history)
    assert (gen._last_layer is not None) == (arch != "gpt2")  # gpt2 keeps the plain forward
    layers = gen.model.base_model.layers if arch != "gpt2" else gen.model.transformer.h
    last = layers[-1]
    seqs = ds.sequences()
    histories = [list(seqs[0][:9]), [], list(seqs[1][:2]), list(seqs[2][:30]), [4]]  # padded rows, an empty one
    fast = gen.generate(histories, 10, [[], [5, 6], [], [], []])
    assert layers[-1] is last  # the model is left as it was
    gen._last_layer = None
    full = gen.generate(histories, 10, [[], [5, 6], [], [], []])
    assert [[c.item for c in r] for r in fast] == [[c.item for c in r] for r in full]
    assert np.allclose([[c.score for c in r] for r in fast], [[c.score for c in r] for r in full], atol=1e-5)
