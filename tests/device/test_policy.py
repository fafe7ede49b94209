"""Request policies: forced rules, deterministic random draws, thresholds, budget calibration, the registry."""
import math

import numpy as np
import pytest

from device.runtime.policies import (POLICIES, Calibration, Decision, PolicySpec, PolicyState, RequestPolicy,
                                     parse_policy, uniform)
from device.runtime.policies.always import Always
from device.runtime.policies.budget import Budget
from device.runtime.policies.every_n import EveryN
from device.runtime.policies.never import Never
from device.runtime.policies.random_rate import RandomRate
from device.runtime.policies.threshold import Threshold
from shared.errors import ConfigError, InvalidArgumentError


def state(event=1, since=1, score=20.0, remaining=40, k=10, user="u1"):
    return PolicyState(user, event, since, score, remaining, k)


def test_forced_rules_apply_to_every_policy():
    for policy in (Never(), Always(), EveryN(3), RandomRate(0.0), Threshold(1e9), Budget(0.1, [1.0] * 20)):
        empty = policy.decide(state(remaining=0))
        assert empty.request and "no candidates" in empty.reason
        short = policy.decide(state(remaining=9))
        assert short.request and "K=10" in short.reason


def test_simple_policies_and_reasons():
    assert not Never().decide(state()).request
    assert Always().decide(state()).request
    assert [EveryN(3).decide(state(since=s)).request for s in (1, 2, 3, 4)] == [False, False, True, True]
    d = Threshold(18.0).decide(state(score=18.0))
    assert d.request and ">=" in d.reason and d.threshold == 18.0
    assert not Threshold(18.0).decide(state(score=17.9)).request
    assert not Threshold(18.0).decide(state(score=math.nan)).request


def test_random_is_deterministic_and_hits_its_rate():
    policy = RandomRate(0.2, seed=7)
    draws = [policy.decide(state(event=e, user=f"u{u}")).request for u in range(100) for e in range(1, 51)]
    again = [RandomRate(0.2, seed=7).decide(state(event=e, user=f"u{u}")).request for u in range(100) for e in range(1, 51)]
    assert draws == again
    assert abs(np.mean(draws) - 0.2) < 0.02
    other = [RandomRate(0.2, seed=8).decide(state(event=e, user=f"u{u}")).request for u in range(100) for e in range(1, 51)]
    assert draws != other
    assert 0.0 <= uniform(1, "x", 3) < 1.0


def test_calibrated_fixed_budget_uses_the_quantile():
    rng = np.random.default_rng(0)
    calib = rng.normal(20, 2, 5000)
    policy = Budget(0.1, calib, adapt=False, window=calib.size)
    assert np.mean(calib >= policy.decide(state(score=0.0)).threshold) == pytest.approx(0.1, abs=0.002)
    fresh = rng.normal(20, 2, 5000)
    hits = [policy.decide(state(event=i, score=s)).request for i, s in enumerate(fresh)]
    assert abs(np.mean(hits) - 0.1) < 0.02


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_online_budget_tracks_the_target_under_drift_and_forced_requests(rate):
    rng = np.random.default_rng(1)
    policy = Budget(rate, window=500)
    hits = []
    for i in range(6000):
        drift = 5.0 * i / 6000  # the score distribution moves while the policy runs
        remaining = 5 if rng.random() < 0.02 else 40  # 2% forced requests count against the budget
        hits.append(policy.decide(state(event=i, user=f"u{i % 50}", score=rng.normal(20 + drift, 2),
                                        remaining=remaining)).request)
    assert abs(np.mean(hits[500:]) - rate) <= 0.02
    assert abs(policy.realised_rate - rate) <= 0.02


def test_budget_handles_ties_in_discrete_scores():
    rng = np.random.default_rng(2)
    policy = Budget(0.1, window=1000)
    hits = [policy.decide(state(event=i, user=f"u{i}", score=float(rng.integers(0, 3)))).request for i in range(5000)]
    assert abs(np.mean(hits[1000:]) - 0.1) <= 0.02


def test_budget_records_its_threshold_and_reason():
    policy = Budget(0.5, [1.0, 2.0, 3.0, 4.0], adapt=False)
    d = policy.decide(state(score=3.5))
    assert d.request and d.threshold == 3.0 and "budget threshold" in d.reason
    assert not policy.decide(state(score=1.0)).request


def test_bad_configs_raise():
    with pytest.raises(ConfigError):
        EveryN(0)
    with pytest.raises(ConfigError):
        RandomRate(1.5)
    with pytest.raises(ConfigError):
        Budget(0.0)
    with pytest.raises(InvalidArgumentError):
        Budget(0.1, adapt=False)
    with pytest.raises(InvalidArgumentError):
        parse_policy("sometimes")
    with pytest.raises(InvalidArgumentError):
        parse_policy("every:x")


def test_parse_and_build():
    assert isinstance(parse_policy("never"), Never)
    assert parse_policy("every:4").n == 4
    assert parse_policy("random:0.3", seed=5).seed == 5
    assert parse_policy("budget:0.2").rate == 0.2
    assert parse_policy("threshold:17.5").threshold == 17.5
    assert isinstance(PolicySpec("always").build(), Always)


def test_every_builtin_is_registered_under_its_name_and_labelled_in_its_cli_spelling():
    assert POLICIES.names() == ("always", "budget", "every", "never", "random", "threshold")
    for name, cls in POLICIES.items():
        assert cls.name == name
    for text in ("never", "always", "every:4", "random:0.250", "threshold:17.500", "budget:0.200"):
        assert parse_policy(text).label() == text  # a label can be pasted back on the command line


@pytest.mark.parametrize("old", ["every-n", "every-n:3", "consistency:20", "consistency-budget:0.2", "sometimes"])
def test_old_spellings_are_refused_naming_the_value_and_the_known_ones(old):
    with pytest.raises(InvalidArgumentError) as info:
        parse_policy(old)
    assert info.value.field == "policy" and info.value.value == old
    assert all(usage in str(info.value) for usage in ("never", "every:N", "threshold:T", "budget:R"))


def test_a_spec_builds_what_a_fleet_driver_asks_for():
    assert PolicySpec("every", rate=0.2).build().n == 5
    assert PolicySpec("every", rate=0.8).build().n == 1
    random = PolicySpec("random", rate=1.3, seed=4).build()
    assert (random.rate, random.seed) == (1.0, 4)  # a matched rate is clipped into [0, 1]
    assert PolicySpec("threshold", threshold=12.5).build().threshold == 12.5
    fixed = PolicySpec("budget", rate=0.2, calibration=Calibration(3.5, (1.0, 2.0))).build()
    assert isinstance(fixed, Threshold) and fixed.threshold == 3.5 and not fixed.fleet_state
    adaptive = PolicySpec("budget", rate=0.2, seed=3, calibration=Calibration(3.5, (1.0, 2.0), adaptive=True)).build()
    assert isinstance(adaptive, Budget) and adaptive.fleet_state and adaptive.seed == 3 and adaptive._filled == 2
    with pytest.raises(InvalidArgumentError, match="known"):
        PolicySpec("consistency-budget", rate=0.2).build()


def test_a_policy_registered_from_outside_is_found_by_every_entry_point():
    class Second(RequestPolicy):
        """Requests on the second event of each list."""

        name = "second"
        usage = "second"

        def _decide(self, state):
            return Decision(state.events_since_request == 2, "second event", state.score)

    with POLICIES.registered("second", Second):
        assert isinstance(parse_policy("second"), Second) and isinstance(PolicySpec("second").build(), Second)
        assert [parse_policy("second").decide(state(since=s)).request for s in (1, 2, 3)] == [False, True, False]
    assert "second" not in POLICIES


# --- protocol B replay on ML-100K (slow): the budget policy's realised request rate -----------------
class _EmbeddingReranker:
    """numpy stand-in SRM (random item embeddings, mean-pooled history) when no trained export exists."""

    def __init__(self, num_items, history_length=50, seed=0):
        from shared.records import ModelFormat, ModelManifest, TensorSpec

        self.emb = np.random.default_rng(seed).normal(size=(num_items + 1, 16)).astype(np.float32)
        self.emb[0] = 0
        self.history_length = history_length
        self.manifest = ModelManifest("stand-in", "v0", ModelFormat.ONNX, "x", "0" * 64, 1,
                                      (TensorSpec("history", "int64", ("b", history_length)),
                                       TensorSpec("candidates", "int64", ("b", "c"))),
                                      (TensorSpec("scores", "float32", ("b", "c")),), history_length, num_items,
                                      "stand-in", "")

    def score(self, histories, candidates):
        h = self.emb[histories].mean(axis=1)
        return np.einsum("bcd,bd->bc", self.emb[candidates], h)


def _replay(split, generator, reranker, policy, users):
    """Protocol B for `users` (indices into the split): returns (requests, steps, scores seen)."""
    from device.runtime.session import DeviceSession, SessionConfig
    from shared.records import CandidateResponse

    class Source:
        def get_candidates(self, request):
            (row,) = generator.generate([list(request.history)], request.num_candidates, [[]])
            return CandidateResponse(tuple(row), generator.version, 0.0)

    requests = steps = 0
    scores = []
    for u in users:
        first = generator.generate([list(split.cloud_seen[u])], 50, [list(split.past[u])])[0]
        session = DeviceSession(SessionConfig(user_id=str(u)), reranker, policy, lambda: 0.0, source=Source(),
                                history=tuple(int(i) for i in split.past[u]),
                                candidates=CandidateResponse(tuple(first), generator.version, 0.0))
        for item in split.streams[u]:
            result = session.on_event(int(item))
            steps += 1
            requests += result.requested
            scores.append(result.decision.score)
    return requests, steps, scores


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_budget_rate_on_ml100k_streams(ml100k_dir, rate):
    from pathlib import Path

    from device.runtime.artifact import load_reranker
    from shared.data.dataset import load_dataset
    from shared.data.splits import stream_split
    from shared.generator import PopularityGenerator

    dataset = load_dataset(ml100k_dir)
    split = stream_split(dataset)
    generator = PopularityGenerator.from_sequences(split.cloud_seen, dataset.num_items)
    export = Path(__file__).resolve().parents[2] / "runs" / "demo" / "srm-coop" / "onnx"  # what `make demo` exports
    reranker = load_reranker(export) if (export / "manifest.json").is_file() else _EmbeddingReranker(dataset.num_items)
    users = np.random.default_rng(0).permutation(len(split.users))
    calib, test = users[: len(users) // 2], users[len(users) // 2:]
    # online: one policy shared by the fleet, learning the score distribution as it goes
    requests, steps, _ = _replay(split, generator, reranker, Budget(rate), users)
    assert abs(requests / steps - rate) <= 0.02, (requests, steps)
    # calibrated on a replay of half the users (no requests), then run on the other half, adapting
    _, _, calib_scores = _replay(split, generator, reranker, Never(), calib)
    requests, steps, _ = _replay(split, generator, reranker, Budget(rate, calib_scores), test)
    assert abs(requests / steps - rate) <= 0.02, (requests, steps)
