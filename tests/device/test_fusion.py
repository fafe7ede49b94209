"""Fusion rules and norms, checked on orders known by construction (not on restated formulas)."""
import numpy as np
import pytest

from device.runtime.consistency import srm_order
from device.runtime.fusion import LLM_NORMS, SRM_NORMS, FusionConfig, ListFusion, fuse, fused_order, sigmoid
from shared.errors import ConfigError, InvalidArgumentError

LLM_SCORES = np.array([-1.0, -2.0, -3.0, -4.0])  # the LLM's order is its list order: slot 0 best
LOGITS = np.array([-3.0, 0.0, 3.0, 0.5])  # the SRM's order: slots 2, 3, 1, 0

LINEAR = [FusionConfig("linear", alpha, llm, srm) for alpha in (0.1, 0.35, 0.5, 0.9)
          for llm in LLM_NORMS.names() for srm in SRM_NORMS.names()]


def _llm_list(rng, size):
    """LLM scores in the list's order (best first), as the cloud sends them."""
    return -np.sort(rng.exponential(size=size)).cumsum()


@pytest.mark.parametrize("config", [FusionConfig(), *LINEAR], ids=str)
def test_an_item_first_in_both_orders_stays_first(config):
    rng = np.random.default_rng(0)
    for _ in range(50):
        llm = _llm_list(rng, 12)
        logits = rng.normal(size=12) * 3
        logits[0] = logits.max() + rng.exponential()  # slot 0: the LLM's best and the SRM's best
        assert fused_order(config, llm, logits)[0] == 0


@pytest.mark.parametrize("llm_norm", LLM_NORMS.names())
@pytest.mark.parametrize("srm_norm", SRM_NORMS.names())
def test_alpha_one_gives_the_llm_order_and_alpha_zero_the_srm_order(llm_norm, srm_norm):
    one = FusionConfig("linear", 1.0, llm_norm, srm_norm)
    zero = FusionConfig("linear", 0.0, llm_norm, srm_norm)
    assert fused_order(one, LLM_SCORES, LOGITS).tolist() == [0, 1, 2, 3]
    assert fused_order(zero, LLM_SCORES, LOGITS).tolist() == [2, 3, 1, 0]


def test_the_llm_and_srm_rules_are_the_two_sides_alone():
    assert fused_order(FusionConfig(rule="llm"), LLM_SCORES, LOGITS).tolist() == [0, 1, 2, 3]
    assert fused_order(FusionConfig(rule="srm"), LLM_SCORES, LOGITS).tolist() == [2, 3, 1, 0]
    assert srm_order(LOGITS).tolist() == [2, 3, 1, 0]


def test_the_reference_rule_orders_as_the_linear_rule_at_one_half_with_ranks_and_probabilities():
    rng = np.random.default_rng(1)
    reference, linear = FusionConfig(rule="reference"), FusionConfig("linear", 0.5, "rank", "prob")
    for _ in range(50):
        llm, logits = _llm_list(rng, 20), rng.normal(size=20) * 2
        assert fused_order(reference, llm, logits).tolist() == fused_order(linear, llm, logits).tolist()


def test_a_sure_llm_outweighs_a_mild_srm_preference_only_with_its_log_probabilities():
    confident = np.array([0.0, -30.0, -30.0, -30.0])  # log-probabilities: the LLM is sure of slot 0
    mild = np.array([0.0, 0.0, 0.0, 1.0])  # the SRM mildly prefers slot 3
    # the product of experts: a gap of 30 nats outweighs 1 even at alpha 0.1
    assert fused_order(FusionConfig("linear", 0.1, "logprob", "logit"), confident, mild)[0] == 0
    # ranks see only the LLM's order, a softmax at most a difference of 1: at alpha 0.1 the SRM's preference wins
    for llm_norm in ("rank", "softmax"):
        assert fused_order(FusionConfig("linear", 0.1, llm_norm, "logit"), confident, mild)[0] == 3


def test_a_sure_srm_outweighs_the_llm_order_only_with_its_logits():
    logits = np.array([0.0, 0.1, 50.0])  # the SRM is sure of slot 2, the LLM's last
    for srm_norm, first in (("logit", 2), ("prob", 0), ("rank", 0)):  # prob saturates; ranks tie, ties keep slot 0
        config = FusionConfig("linear", 0.5, "rank", srm_norm)
        assert fused_order(config, np.zeros(3), logits)[0] == first, srm_norm


def test_softmax_uses_how_far_apart_the_llm_scores_are():
    llm = np.array([0.0, -0.01, -10.0])  # slots 0 and 1 nearly tied for the LLM
    logits = np.array([0.0, 0.2, 0.0])  # the SRM prefers slot 1 a little
    assert fused_order(FusionConfig("linear", 0.5, "softmax", "prob"), llm, logits)[0] == 1
    assert fused_order(FusionConfig("linear", 0.5, "rank", "prob"), llm, logits)[0] == 0


def test_a_constant_shift_of_either_side_keeps_the_product_of_experts_order():
    config = FusionConfig(rule="linear", alpha=0.25, llm_norm="logprob", srm_norm="logit")
    shifted = fused_order(config, LLM_SCORES - 7.0, LOGITS + 3.0)
    assert shifted.tolist() == fused_order(config, LLM_SCORES, LOGITS).tolist()


def test_positions_keep_the_gaps_of_the_list_the_cloud_sent():
    # slots 3 and 10 of a list of 50 remain: the LLM's gap between them is 7/50, which a clear SRM preference
    # for the later one overcomes; read as a fresh list of 2 the gap would be 1/2 and the LLM's order would stay
    logits = np.array([0.0, 3.0])
    kept = fuse(FusionConfig(), np.zeros(2), logits, positions=np.array([3, 10]), length=50)
    assert np.argsort(-kept, kind="stable").tolist() == [1, 0]
    assert fused_order(FusionConfig(), np.zeros(2), logits).tolist() == [0, 1]


def test_ties_keep_llm_order_and_bad_inputs_raise():
    assert fused_order(FusionConfig(rule="srm"), np.zeros(3), np.zeros(3)).tolist() == [0, 1, 2]
    with pytest.raises(InvalidArgumentError):
        fuse(FusionConfig(), np.zeros(3), np.zeros(2))
    with pytest.raises(InvalidArgumentError):
        fuse(FusionConfig(), np.zeros(2), np.array([0.0, np.nan]))
    with pytest.raises(ConfigError):
        FusionConfig(alpha=1.5)
    with pytest.raises(ConfigError):
        FusionConfig(rule="mean")


@pytest.mark.parametrize("field, value", [("srm_norm", "sigmoid"), ("srm_norm", "logits"), ("llm_norm", "logit")])
def test_unknown_norms_are_refused_naming_the_known_ones(field, value):
    with pytest.raises(ConfigError) as info:
        FusionConfig(rule="linear", **{field: value})
    assert info.value.key == field and info.value.value == value
    known = SRM_NORMS.names() if field == "srm_norm" else LLM_NORMS.names()
    assert all(name in str(info.value) for name in known)


def test_norm_registries_hold_the_device_names():
    assert LLM_NORMS.names() == ("logprob", "rank", "softmax")
    assert SRM_NORMS.names() == ("logit", "prob", "rank")


def test_sigmoid_is_stable_monotone_and_symmetric():
    assert np.allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
    x = np.sort(np.random.default_rng(1).normal(size=1000) * 10)
    assert np.all(np.diff(sigmoid(x)) >= 0)
    assert np.allclose(sigmoid(-x), 1.0 - sigmoid(x))


@pytest.mark.parametrize("config", [FusionConfig(), *LINEAR[::5], FusionConfig("llm"), FusionConfig("srm")], ids=str)
def test_list_fusion_reused_across_events_equals_a_fresh_fusion_bit_for_bit(config):
    rng = np.random.default_rng(0)
    llm = _llm_list(rng, 20)
    slots = np.sort(rng.choice(30, 20, replace=False))  # a shrunken list of L = 30
    plan = ListFusion(config, llm, positions=slots, length=30)
    for _ in range(3):  # one plan, several events: the cached LLM term must not change
        logits = np.round(rng.normal(size=20) * 3, 1)  # ties
        assert np.array_equal(plan.fuse(logits), fuse(config, llm, logits, positions=slots, length=30))


def test_untrained_items_get_the_mean_of_the_lists_other_srm_scores():
    from device.runtime.fusion import neutral_untrained, untrained_mask

    items = np.array([10, 11, 12, 13])
    logits = np.array([3.0, -50.0, 1.0, 2.0])  # item 11: a score that only says "never trained on"
    mask = untrained_mask((11, 99), num_items=100)
    assert neutral_untrained(items, logits, mask).tolist() == [3.0, 2.0, 1.0, 2.0]
    assert untrained_mask((), 100) is None and neutral_untrained(items, logits, None) is logits
    assert neutral_untrained(items[1:2], logits[1:2], mask).tolist() == [-50.0]  # no other candidate to average
