"""Fusion rules: the reference rule, the general linear rule and its two ends."""
import numpy as np
import pytest

from device.runtime.fusion import FusionConfig, ListFusion, fuse, fused_order, sigmoid, srm_order
from shared.errors import ConfigError, InvalidArgumentError

LLM_SCORES = np.array([-1.0, -2.0, -3.0, -4.0])
LOGITS = np.array([-3.0, 0.0, 3.0, 0.5])


def test_reference_rule_closed_form():
    fused = fuse(FusionConfig(rule="reference"), LLM_SCORES, LOGITS)
    expected = -(np.arange(4) + 1) / 4 + (sigmoid(LOGITS) - 0.5)
    assert np.allclose(fused, expected)
    assert fused_order(FusionConfig(), LLM_SCORES, LOGITS).tolist() == np.argsort(-expected, kind="stable").tolist()


def test_linear_rank_prob_at_half_equals_reference_order():
    ref = fuse(FusionConfig(rule="reference"), LLM_SCORES, LOGITS)
    lin = fuse(FusionConfig(rule="linear", alpha=0.5), LLM_SCORES, LOGITS)
    assert np.allclose(lin * 2, ref)


def test_ends_are_llm_only_and_srm_only():
    one = FusionConfig(rule="linear", alpha=1.0)
    zero = FusionConfig(rule="linear", alpha=0.0)
    assert fused_order(one, LLM_SCORES, LOGITS).tolist() == [0, 1, 2, 3]
    assert fused_order(FusionConfig(rule="llm"), LLM_SCORES, LOGITS).tolist() == [0, 1, 2, 3]
    assert fused_order(zero, LLM_SCORES, LOGITS).tolist() == [2, 3, 1, 0]
    assert fused_order(FusionConfig(rule="srm"), LLM_SCORES, LOGITS).tolist() == [2, 3, 1, 0]
    assert srm_order(LOGITS).tolist() == [2, 3, 1, 0]


def test_softmax_normalisation_uses_llm_score_values():
    config = FusionConfig(rule="linear", alpha=0.5, llm_norm="softmax")
    soft = np.exp(LLM_SCORES) / np.exp(LLM_SCORES).sum()
    assert np.allclose(fuse(config, LLM_SCORES, LOGITS), 0.5 * soft + 0.5 * (sigmoid(LOGITS) - 0.5))


def test_product_of_experts_weighs_log_probabilities():
    config = FusionConfig(rule="linear", alpha=0.25, llm_norm="logprob", srm_norm="logit")
    assert np.allclose(fuse(config, LLM_SCORES, LOGITS), 0.25 * LLM_SCORES + 0.75 * LOGITS)
    # A constant shift of either side (log-probabilities within one list) does not change the order.
    shifted = fused_order(config, LLM_SCORES - 7.0, LOGITS + 3.0)
    assert shifted.tolist() == fused_order(config, LLM_SCORES, LOGITS).tolist() == [2, 1, 3, 0]
    # A confident LLM outweighs a mild SRM preference, which rank fusion cannot express.
    confident = np.array([0.0, -20.0, -20.0, -20.0])
    assert fused_order(config, confident, LOGITS)[0] == 0
    with pytest.raises(ConfigError):
        FusionConfig(rule="linear", srm_norm="logits")


def test_srm_rank_normalisation():
    config = FusionConfig(rule="linear", alpha=0.0, srm_norm="rank")
    # SRM ranks of LOGITS: item 2 first, 3 second, 1 third, 0 fourth
    assert np.allclose(fuse(config, LLM_SCORES, LOGITS), [-1.0, -0.75, -0.25, -0.5])


def test_positions_keep_the_original_list_slots():
    # a list of 50 where only slots 3 and 40 remain: the LLM term uses -(j+1)/50
    fused = fuse(FusionConfig(rule="llm"), np.zeros(2), np.zeros(2), positions=np.array([3, 40]), length=50)
    assert np.allclose(fused, [-4 / 50, -41 / 50])


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


def test_sigmoid_is_stable_for_large_logits():
    assert np.allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("config", [FusionConfig(), FusionConfig("linear", 0.3, "softmax", "rank"),
                                    FusionConfig("linear", 0.7, "rank", "prob"),
                                    FusionConfig("linear", 0.4, "logprob", "logit"), FusionConfig("llm"),
                                    FusionConfig("srm")])
def test_list_fusion_reused_across_events_equals_the_rule_bit_for_bit(config):
    rng = np.random.default_rng(0)
    llm = rng.normal(size=20)
    slots = np.sort(rng.choice(30, 20, replace=False))  # a shrunken list of L = 30
    plan = ListFusion(config, llm, positions=slots, length=30)
    for _ in range(3):  # one plan, several events: the cached LLM term must not change
        logits = np.round(rng.normal(size=20) * 3, 1)  # ties
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits))
        rank = -(slots + 1.0) / 30.0
        if config.rule == "llm":
            expected = rank
        elif config.rule == "srm":
            expected = probs
        elif config.rule == "reference":
            expected = rank + (probs - 0.5)
        else:
            llm_term = {"rank": rank, "logprob": llm,
                        "softmax": np.exp(llm - llm.max()) / np.exp(llm - llm.max()).sum()}[config.llm_norm]
            ranks = np.empty(20)
            ranks[np.argsort(-probs, kind="stable")] = np.arange(20)
            srm_term = {"prob": probs - 0.5, "rank": -(ranks + 1.0) / 20, "logit": logits}[config.srm_norm]
            expected = config.alpha * llm_term + (1.0 - config.alpha) * srm_term
        assert np.array_equal(plan.fuse(logits), expected)
        assert np.array_equal(fuse(config, llm, logits, positions=slots, length=30), expected)


def test_sigmoid_equals_its_formula_bit_for_bit():
    x = np.random.default_rng(1).normal(size=1000).astype(np.float32) * 10
    assert np.array_equal(sigmoid(x), 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64))))


def test_untrained_items_get_the_mean_of_the_lists_other_srm_scores():
    from device.runtime.fusion import neutral_untrained, untrained_mask

    items = np.array([10, 11, 12, 13])
    logits = np.array([3.0, -50.0, 1.0, 2.0])  # item 11: a score that only says "never trained on"
    mask = untrained_mask((11, 99), num_items=100)
    assert neutral_untrained(items, logits, mask).tolist() == [3.0, 2.0, 1.0, 2.0]
    assert untrained_mask((), 100) is None and neutral_untrained(items, logits, None) is logits
    assert neutral_untrained(items[1:2], logits[1:2], mask).tolist() == [-50.0]  # no other candidate to average
