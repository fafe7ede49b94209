"""SRM definitions: the registry, shapes, padding, causality, history bias and size."""
from __future__ import annotations

import pytest
import torch

from device.training.models import MODELS, build_model
from shared.errors import ConfigError

MODEL_NAMES = MODELS.names()  # every registered SRM

N, T = 40, 12
TINY = {"num_items": N, "max_len": T, "hidden": 32}


def tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, dict(TINY)).eval()


def batch(seed: int = 0, b: int = 3, c: int = 7):
    gen = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N + 1, (b, T), generator=gen)
    history[0, : T // 2] = 0  # left padding
    return history, torch.randint(1, N + 1, (b, c), generator=gen)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_dtype_and_score_all_agree(name):
    model = tiny(name)
    history, cands = batch()
    with torch.no_grad():
        scores = model(history, cands)
        full = model.score_all(history)
    assert scores.shape == (3, 7) and scores.dtype == torch.float32
    assert full.shape == (3, N + 1)
    assert torch.allclose(full.gather(1, cands), scores, atol=1e-5)
    assert (full[:, 0] < -1e8).all()  # padding is never recommended


@pytest.mark.parametrize("name", ["sasrec", "din"])
def test_padding_slots_are_masked(name):
    model = tiny(name)
    history, cands = batch()
    with torch.no_grad():
        before = model(history, cands)
        model.item_emb.weight[0].normal_()  # whatever sits in the padding row must not matter
        after = model(history, cands)
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rows_are_independent(name):
    model = tiny(name)
    history, cands = batch(b=4)
    with torch.no_grad():
        together = model(history, cands)
        alone = torch.cat([model(history[i:i + 1], cands[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_encode_is_causal(name):
    model = tiny(name)
    history, _ = batch()
    changed = history.clone()
    changed[:, -1] = (changed[:, -1] % N) + 1  # alter only the most recent item
    with torch.no_grad():
        a, b = model.encode(history), model.encode(changed)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5)
    assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-5)


def test_sasrec_last_only_encoding_equals_the_full_one():
    """Scoring computes only the newest position in the last block; it must equal the full pass."""
    model = tiny("sasrec")
    history, _ = batch(b=4)
    history[0, :-1] = 0  # one row with a single real item
    with torch.no_grad():
        full, last = model.encode(history), model.encode(history, last_only=True)
    assert last.shape == (4, 1, full.shape[-1])
    assert torch.allclose(full[:, -1:], last, atol=1e-5)


def test_sasrec_untied_output_scores_with_its_own_table():
    torch.manual_seed(0)
    tied, untied = (build_model("sasrec", {**TINY, "tied_output": flag}).eval() for flag in (True, False))
    history, cands = batch()
    with torch.no_grad():
        scores = untied(history, cands)
        assert torch.allclose(scores, untied.score_all(history).gather(1, cands), atol=1e-5)
        untied.out_emb.weight.mul_(2.0)  # only the output table moves the scores
        assert torch.allclose(untied(history, cands), 2.0 * scores, atol=1e-5)
    assert tied.out_emb is None and untied.out_emb is not untied.item_emb


def with_age_offsets(name: str):
    """A tiny model with a history bias whose offset for age a (0 = the most recent item) is a + 1."""
    torch.manual_seed(0)
    model = build_model(name, {**TINY, "history_bias": True}).eval()
    with torch.no_grad():
        model.history_bias.raw.copy_((torch.arange(T) + 1.0) / model.history_bias.STEP_SCALE)
    return model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_history_bias_offsets_the_history_items_by_their_age(name):
    model = with_age_offsets(name)
    plain = build_model(name, dict(TINY)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("history_bias")})
    history = torch.tensor([[0] * (T - 3) + [7, 9, 4], list(range(1, T + 1))])
    cands = torch.tensor([[4, 9, 7, 5, 1], [T, 1, T + 1, 2, 3]])
    with torch.no_grad():
        offsets = model(history, cands) - plain(history, cands)
        full = model.score_all(history)
    assert torch.allclose(offsets, torch.tensor([[1.0, 2, 3, 0, 0], [1, T, 0, T - 1, T - 2]]), atol=1e-5)
    assert torch.allclose(full.gather(1, cands), model(history, cands), atol=1e-5)
    assert (full[:, 0] < -1e8).all()  # padding slots add to column 0, which stays NEG_INF


def test_history_bias_per_position_offsets_see_only_the_past():
    """Training adds `positions` to every position's logits: position t sees items <= t with their ages."""
    bias = with_age_offsets("sasrec").history_bias
    history = torch.tensor([[0] * (T - 4) + [7, 9, 4, 8]])
    with torch.no_grad():
        per_position = bias.positions(history, N + 1)  # (1, T, N + 1)
        assert torch.allclose(per_position[:, -1, 1:], bias.catalogue(history, N + 1)[:, 1:])
        third = per_position[0, T - 2]  # after 7, 9, 4: 8 is still in the future
    assert third[[4, 9, 7, 8]].tolist() == [1.0, 2.0, 3.0, 0.0]


def test_the_registry_finds_every_model_file():
    """Each file of device/training/models registers its model; nothing else lists them."""
    assert {"sasrec", "gru4rec", "din"} <= set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert MODELS.get(name).__module__ == f"device.training.models.{name}"


def test_bad_config_and_unknown_model_are_refused():
    with pytest.raises(ConfigError, match="heads"):
        build_model("sasrec", {"num_items": N, "hidden": 30, "heads": 4})
    with pytest.raises(ConfigError, match="'bert4rec'.*known: din, gru4rec, sasrec"):
        build_model("bert4rec", {"num_items": N})
    with pytest.raises(ConfigError):
        build_model("sasrec", {"num_items": N, "no_such_field": 1})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_ml100k_models_fit_in_two_megabytes(name):
    model = build_model(name, {"num_items": 1682})
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    assert size <= 2_000_000, size


@pytest.mark.parametrize("name, fields", [
    ("sasrec", {}), ("sasrec", {"positions": "rotary", "history_bias": True}),
    ("sasrec", {"tied_output": False, "layers": 3, "heads": 4, "scale_embeddings": False}),
    ("gru4rec", {"history_bias": True}), ("gru4rec", {"layers": 2}), ("din", {})])
def test_executorch_form_scores_as_forward(name, fields):
    """export.write_pte lowers `for_executorch()`: the scores of `forward` (left padding, a row of padding only,
    a single item), from the same parameters, which it leaves as they were."""
    torch.manual_seed(0)
    model = build_model(name, {**TINY, **fields}).eval()
    if model.history_bias is not None:
        with torch.no_grad():
            model.history_bias.raw.normal_(std=0.1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    history, cands = batch(b=4)
    history[1] = 0
    history[2, :-1] = 0
    with torch.no_grad():
        assert torch.allclose(model.for_executorch()(history, cands), model(history, cands), atol=1e-5)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in after)


def test_executorch_form_steps_as_the_cached_step():
    """The user encoder's .pte lowers `for_executorch().step`: the rotary SASRec's cached step (user vector, the new
    item's keys and values), with empty slots in the past, at several positions."""
    torch.manual_seed(0)
    model = build_model("sasrec", {**TINY, "positions": "rotary", "layers": 2}).eval()
    config = model.config
    cache = (config.layers, config.heads, config.max_len - 1, config.hidden // config.heads)
    for position in (0, 7, 5000):
        inputs = (torch.randn(1, config.hidden), torch.tensor([position]), torch.randn(cache), torch.randn(cache),
                  torch.rand(config.max_len - 1) > 0.4)
        with torch.no_grad():
            for got, expected in zip(model.for_executorch().step(*inputs), model.step(*inputs)):
                assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
