"""Consistency measures against closed-form values."""
import numpy as np
import pytest

from device.runtime import consistency as c
from shared.errors import InvalidArgumentError

LLM = [10, 20, 30, 40, 50]
REV = LLM[::-1]


def test_positions_maps_llm_slots_to_srm_positions():
    assert c.positions(LLM, [20, 10, 30, 50, 40]).tolist() == [1, 0, 2, 4, 3]


def test_footrule_identical_reversed_and_swap():
    assert c.footrule(LLM, LLM) == 0.0
    # reversed: |j - (n-1-j)| = 4,2,0,2,4 -> mean 12/5
    assert c.footrule(LLM, REV) == pytest.approx(12 / 5)
    assert c.footrule(LLM, [20, 10, 30, 40, 50]) == pytest.approx(2 / 5)


def test_lsc4rec_penalty_formula():
    assert c.lsc4rec_score(LLM, LLM) == pytest.approx(16.0)  # (4 + 0)^2
    assert c.lsc4rec_score(LLM, REV, num_invalid=10) == pytest.approx(12 / 5 + 49.0)  # (4 + 3)^2
    assert c.lsc4rec_score(LLM, LLM, 1) > c.lsc4rec_score(LLM, LLM, 0)
    with pytest.raises(InvalidArgumentError):
        c.lsc4rec_score(LLM, LLM, -1)


def test_kendall_tau():
    assert c.kendall_tau(LLM, LLM) == 1.0
    assert c.kendall_tau(LLM, REV) == -1.0
    # one adjacent swap of 5 items: 1 discordant pair of 10 -> (9 - 1) / 10
    assert c.kendall_tau(LLM, [20, 10, 30, 40, 50]) == pytest.approx(0.8)
    assert c.kendall_tau([7], [7]) == 1.0


def test_top_k_overlap():
    assert c.top_k_overlap(LLM, LLM, 3) == 1.0
    assert c.top_k_overlap(LLM, REV, 2) == 0.0
    assert c.top_k_overlap(LLM, [10, 40, 20, 30, 50], 2) == 0.5
    assert c.top_k_overlap(LLM, REV, 10) == 1.0  # k beyond the list: whole list
    with pytest.raises(InvalidArgumentError):
        c.top_k_overlap(LLM, LLM, 0)


def test_rbo_closed_form():
    assert c.rank_biased_overlap(LLM, LLM, 0.9) == pytest.approx(1.0)
    # two items swapped: A_1 = 0, A_2 = 1 -> (1-p)/p * (0*p + p^2) + 1*p^2 = (1-p) p + p^2 = p
    p = 0.8
    assert c.rank_biased_overlap([1, 2], [2, 1], p) == pytest.approx(p)
    # reversed 3: A = 0, 1/2, 1 -> (1-p)/p (1/2 p^2 + p^3) + p^3
    expected = (1 - p) / p * (0.5 * p**2 + p**3) + p**3
    assert c.rank_biased_overlap([1, 2, 3], [3, 2, 1], p) == pytest.approx(expected)


def test_rbo_matches_bruteforce_on_random_permutations():
    rng = np.random.default_rng(0)
    for _ in range(20):
        llm = rng.permutation(50) + 1
        srm = rng.permutation(llm)
        p = 0.9
        agree = [len(set(llm[:d]) & set(srm[:d])) / d for d in range(1, 51)]
        brute = (1 - p) / p * sum(a * p**d for d, a in zip(range(1, 51), agree)) + agree[-1] * p**50
        assert c.rank_biased_overlap(llm, srm, p) == pytest.approx(brute)
        pos = {int(x): i for i, x in enumerate(srm)}
        assert c.footrule(llm, srm) == pytest.approx(np.mean([abs(i - pos[int(x)]) for i, x in enumerate(llm)]))


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(InvalidArgumentError):
        c.footrule([1, 2, 3], [1, 2, 4])
    with pytest.raises(InvalidArgumentError):
        c.kendall_tau([1, 1, 2], [1, 2, 1])
    with pytest.raises(InvalidArgumentError):
        c.inconsistency("nope", np.array([1]), np.array([1]))


def test_inconsistency_is_zero_for_identical_orders_except_penalised():
    for measure in ("footrule", "kendall", "overlap", "rbo"):
        assert c.inconsistency(measure, np.array(LLM), np.array(LLM)) == pytest.approx(0.0)
        assert c.inconsistency(measure, np.array(LLM), np.array(REV), k=2) > 0


def test_catalogue_regret_closed_form():
    # ids 1..4 with p = 0.1, 0.2, 0.3, 0.4 (logits log 1..4; id 0 is padding, its value ignored)
    logits = np.log([99.0, 1.0, 2.0, 3.0, 4.0])
    assert c.catalogue_regret(logits, [1, 2], [], k=2) == pytest.approx(0.7 - 0.3)
    assert c.catalogue_regret(logits, [3, 4, 1], [], k=2) == pytest.approx(0.0)
    assert c.catalogue_regret(logits, [], [], k=1) == pytest.approx(0.4)
    # item 4 consumed: p over 1..3 = 1/6, 2/6, 3/6; top-2 = 5/6, the pool [1, 4] can show only item 1
    assert c.catalogue_regret(logits, [1, 4], [4], k=2) == pytest.approx(5 / 6 - 1 / 6)
    assert c.catalogue_regret(logits, [2], [1, 2, 3, 4], k=2) == 0.0  # nothing showable: nothing missed


def test_catalogue_regret_refuses_bad_input():
    logits = np.zeros(5)
    for kwargs in ({"pool": [5], "excluded": []}, {"pool": [0], "excluded": []}, {"pool": [], "excluded": [7]}):
        with pytest.raises(InvalidArgumentError):
            c.catalogue_regret(logits, k=2, **kwargs)
    with pytest.raises(InvalidArgumentError):
        c.catalogue_regret(logits, [1], [], k=0)
    with pytest.raises(InvalidArgumentError):
        c.catalogue_regret(np.zeros((2, 3)), [1], [], k=1)
    with pytest.raises(InvalidArgumentError):
        c.catalogue_regret(np.array([0.0, 1.0, np.nan]), [1], [], k=1)


ORDER_MEASURES = [name for name, m in c.MEASURES.items() if m.on_positions is not None]


def test_the_registry_holds_every_measure_by_its_one_name():
    assert c.MEASURES.names() == ("est-regret", "footrule", "held-mass", "held-regret", "kendall", "list-belief",
                                  "lsc4rec", "miss", "miss-belief", "miss-depth", "overlap", "rbo", "regret",
                                  "srm-miss-depth")
    assert [name for name, m in c.MEASURES.items() if m.needs_catalogue] == ["regret"]
    assert [name for name, m in c.MEASURES.items() if m.needs_context] == [
        "est-regret", "held-mass", "held-regret", "list-belief", "miss", "miss-belief", "miss-depth", "srm-miss-depth"]
    assert [name for name, m in c.MEASURES.items() if m.needs_partition] == ["est-regret"]
    assert all(m.name == name and m.text for name, m in c.MEASURES.items())
    with pytest.raises(InvalidArgumentError, match="known: est-regret, footrule"):
        c.MEASURES.get("cosine")
    with pytest.raises(InvalidArgumentError, match="catalogue"):
        c.inconsistency("regret", np.array(LLM), np.array(LLM))


@pytest.mark.parametrize("measure", ORDER_MEASURES)
def test_permutation_fast_path_equals_the_checked_measure(measure):
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        llm = rng.choice(1000, n, replace=False)
        perm = rng.permutation(n)  # LLM slots in the SRM's order
        expected = c.inconsistency(measure, llm, llm[perm], num_invalid=3, k=5)
        assert c.MEASURES.get(measure).of_permutation(perm, num_invalid=3, k=5) == expected


@pytest.mark.parametrize("measure", ORDER_MEASURES)
def test_a_lists_score_from_srm_logits_is_the_measure_of_the_srm_order(measure):
    rng = np.random.default_rng(1)
    llm = rng.choice(1000, 30, replace=False)
    logits = np.round(rng.normal(size=30), 1)  # ties keep the LLM order
    srm = llm[np.argsort(-logits, kind="stable")]
    expected = c.inconsistency(measure, llm, srm, num_invalid=4, k=5)
    assert c.MEASURES.get(measure).of_list(logits, num_invalid=4, k=5) == expected


def test_trusted_regret_equals_the_checked_one_with_ties_and_small_pools():
    rng = np.random.default_rng(0)
    logits = np.concatenate([[np.nan], np.round(rng.normal(size=40), 1)])  # ties; id 0 is never read
    excluded = rng.choice(np.arange(1, 41), 10, replace=False)
    showable = np.ones(41, dtype=bool)
    showable[[0, *excluded]] = False
    for k in (1, 5, 30, 40, 60):  # up to and past the number of showable items
        pool = rng.choice(np.arange(1, 41), 8, replace=False)
        expected = c.catalogue_regret(logits, pool, excluded, k)
        x = np.where(showable, logits, -np.inf)
        p = np.exp(x - x[showable].max())
        p /= p.sum()
        kept = pool[showable[pool]]
        assert expected == max(np.sort(p)[-k:].sum() - np.sort(p[kept])[-k:].sum(), 0.0)
        assert c.catalogue_regret_trusted(logits, pool, showable, k) == expected


# --- measures on what the device holds (no catalogue scan) ---
def _context(since_slots=(), list_logits=(), held=(), in_list=(), n=50, k=2):
    slots = np.asarray(since_slots, dtype=np.int64)
    return c.ListContext(np.asarray(list_logits, dtype=np.float64), np.arange(1, slots.size + 1), slots, n, k,
                         np.asarray(held, dtype=np.float64), np.asarray(in_list, dtype=bool))


def test_decayed_misses_count_recent_misses_more():
    assert c.decayed_misses([]) == 0.0
    assert c.decayed_misses([3, 0, 7]) == 0.0  # every consumed item was in the list
    assert c.decayed_misses([-1]) == 1.0  # the item just consumed was not
    assert c.decayed_misses([-1, 4]) == 0.5  # a miss one event ago
    assert c.decayed_misses([-1, -1, -1]) == pytest.approx(1 + 0.5 + 0.25)
    assert c.decayed_misses([-1, 2], decay=0.9) == pytest.approx(0.9)
    miss = c.MEASURES.get("miss")
    assert miss.of_context(_context([5, -1])) == 1.0 > miss.of_context(_context([-1, 5])) == 0.5


def test_decayed_miss_depth_weighs_hits_by_their_llm_slot():
    assert c.decayed_miss_depth([], 50) == 0.0
    assert c.decayed_miss_depth([0], 50) == 0.0  # the LLM's first slot: no staleness
    assert c.decayed_miss_depth([25], 50) == pytest.approx(0.5)
    assert c.decayed_miss_depth([-1], 50) == 1.0
    assert c.decayed_miss_depth([-1, 10], 20) == pytest.approx(0.5 + 0.5)
    assert c.MEASURES.get("miss-depth").of_context(_context([40], n=50)) == pytest.approx(0.8)
    # the SRM's rank just before consumption in place of the LLM's slot
    srm = c.MEASURES.get("srm-miss-depth")
    ctx = c.ListContext(np.zeros(3), np.array([7, 8]), np.array([3, 30]), 50, 5, since_srm_ranks=np.array([-1, 10]))
    assert srm.of_context(ctx) == pytest.approx(0.5 * 1.0 + 10 / 50)


def test_list_belief_is_minus_logsumexp_of_the_lists_logits():
    assert c.list_belief(np.log([1.0, 2.0, 3.0])) == pytest.approx(-np.log(6.0))
    assert c.list_belief([1000.0, 1000.0]) == pytest.approx(-(1000 + np.log(2)))  # no overflow
    assert c.list_belief([]) == np.inf  # nothing left: as stale as can be
    belief = c.MEASURES.get("list-belief")
    assert belief.of_context(_context(list_logits=[-3.0, -4.0])) > belief.of_context(_context(list_logits=[2.0, 1.0]))


def test_held_regret_is_the_catalogue_regret_over_the_held_pool():
    # held pool p = 0.1, 0.2, 0.3, 0.4; the cached list holds the first two
    held, in_list = np.log([1.0, 2.0, 3.0, 4.0]), [True, True, False, False]
    assert c.held_regret(held, in_list, k=2) == pytest.approx(0.7 - 0.3)
    assert c.held_regret(held, [False, False, True, True], k=2) == 0.0  # the list holds the pool's top 2
    assert c.held_regret(held, [True] * 4, k=2) == 0.0  # only the cached list is held: nothing better known
    assert c.held_regret(held, [False] * 4, k=1) == pytest.approx(0.4)
    assert c.held_regret([], [], k=3) == 0.0
    # the same as catalogue_regret with the held pool as the catalogue
    logits = np.concatenate([[0.0], held])
    assert c.held_regret(held, in_list, k=3) == pytest.approx(c.catalogue_regret(logits, [1, 2], [], k=3))
    assert c.MEASURES.get("held-regret").of_context(_context(held=held, in_list=in_list, k=2)) == pytest.approx(0.4)


def test_held_mass_gap_is_the_mass_outside_the_cached_list():
    held = np.log([1.0, 2.0, 3.0, 4.0])
    assert c.held_mass_gap(held, [True, True, False, False]) == pytest.approx(0.7)
    assert c.held_mass_gap(held, [True] * 4) == pytest.approx(0.0)
    assert c.held_mass_gap([], []) == 0.0
    assert c.held_mass_gap([500.0, 500.0], [True, False]) == pytest.approx(0.5)  # no overflow
    assert c.MEASURES.get("held-mass").needs_held and not c.MEASURES.get("miss").needs_held


def test_context_measures_refuse_the_other_paths():
    with pytest.raises(InvalidArgumentError):
        c.MEASURES.get("miss").of_list(np.zeros(3), 0, 2)
    with pytest.raises(InvalidArgumentError):
        c.MEASURES.get("footrule").of_context(_context())


def test_miss_belief_adds_the_weighted_list_belief_to_the_miss_depth():
    logits = np.log([1.0, 3.0])  # list_belief = -log 4
    assert c.miss_belief([-1], 50, logits) == pytest.approx(1.0 - c.BELIEF_WEIGHT * np.log(4.0))
    assert c.miss_belief([25, -1], 50, logits, weight=0.5) == pytest.approx(0.25 + 1.0 - 0.5 * np.log(4.0))
    m = c.MEASURES.get("miss-belief")
    # a miss raises the score; so does a list the SRM believes less in
    assert m.of_context(_context([-1], logits)) > m.of_context(_context([0], logits))
    assert m.of_context(_context([0], logits - 5.0)) > m.of_context(_context([0], logits))


def test_estimated_regret_equals_the_catalogue_regret_given_the_true_partition():
    """With the exact log Z and top-K log-mass of the showable catalogue, est-regret is catalogue_regret."""
    rng = np.random.default_rng(5)
    logits = np.concatenate([[0.0], rng.normal(0, 2, 300)])
    consumed = rng.choice(np.arange(1, 301), 20, replace=False)
    pool = np.setdiff1d(rng.choice(np.arange(1, 301), 50, replace=False), consumed)
    showable = np.ones(301, dtype=bool)
    showable[0] = False
    showable[consumed] = False
    x = logits[showable]
    log_z = np.log(np.exp(x).sum())
    log_top = np.log(np.exp(np.sort(x)[-10:]).sum())
    exact = c.catalogue_regret(logits, pool, consumed, k=10)
    assert c.estimated_regret(logits[pool], np.array([log_z, log_top]), 10) == pytest.approx(exact, abs=1e-12)
    assert np.isnan(c.estimated_regret(logits[pool], None, 10))
    assert c.estimated_regret(np.zeros(0), np.array([log_z, log_top]), 10) == pytest.approx(np.exp(log_top - log_z))
