"""DeviceSession: events, slates, cold start, fusion modes, failures, bad lists and the driven (simulator) use."""
import math

import numpy as np
import pytest

from device.runtime import consistency
from device.runtime.fusion import FusionConfig
from device.runtime.policies.always import Always
from device.runtime.policies.budget import Budget
from device.runtime.policies.every_n import EveryN
from device.runtime.policies.never import Never
from device.runtime.policies.random_rate import RandomRate
from device.runtime.artifact import load_reranker
from device.runtime.session import DeviceSession, SessionConfig
from shared.errors import ConfigError, InvalidArgumentError, UnavailableError, UnknownItemError
from shared.records import Candidate, CandidateRequest, CandidateResponse
from shared.sequences import pad_left
from tests.device.conftest import HISTORY_LENGTH, NUM_ITEMS, VOCAB_HASH, write_artifact

CONFIG = SessionConfig(user_id="u1", slate_size=5, num_candidates=12)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeSource:
    """Answers with the first N items not in the history (score = -rank); can fail or misbehave."""

    def __init__(self):
        self.requests: list[CandidateRequest] = []
        self.fail = False
        self.bad: tuple[int, ...] | None = None

    def get_candidates(self, request):
        self.requests.append(request)
        if self.fail:
            raise UnavailableError("cloud down")
        if self.bad is not None:
            return response(self.bad)
        items = [i for i in range(NUM_ITEMS, 0, -1) if i not in request.history][:request.num_candidates]
        return response(items)


def response(items, version="g1"):
    return CandidateResponse(tuple(Candidate(int(i), -float(n)) for n, i in enumerate(items)), version, 1.0)


@pytest.fixture(scope="module")
def reranker(onnx_dir):
    return load_reranker(onnx_dir, vocab_hash=VOCAB_HASH)


def make(reranker, policy=None, source=None, clock=None, **kwargs):
    return DeviceSession(kwargs.pop("config", CONFIG), reranker, policy or Never(), clock or Clock(), source, **kwargs)


def check_slate(session):
    slate = session.slate()
    assert len(set(slate.items)) == len(slate.items)
    assert all(1 <= i <= NUM_ITEMS for i in slate.items)
    assert not set(slate.items) & set(session.history)
    return slate


def test_cold_start_without_source_gives_empty_stale_slate(reranker):
    session = make(reranker)
    assert session.slate().items == () and session.slate().stale and session.needs_refresh
    result = session.on_event(3)
    assert result.slate.mode == "empty" and result.decision.request and "no candidates" in result.decision.reason
    assert not result.requested and session.history == [3]


def test_cold_start_with_source_fetches_and_serves(reranker):
    source = FakeSource()
    session = make(reranker, source=source)
    result = session.on_event(1)
    assert result.requested and result.request_ok
    assert source.requests[0].history == (1,) and source.requests[0].num_candidates == 12
    slate = check_slate(session)
    assert len(slate.items) == 5 and slate.mode == "fusion" and not slate.stale


def test_events_remove_consumed_items_and_rerank(reranker):
    session = make(reranker, candidates=response(range(1, 13)))
    assert not session.stale
    seen = []
    for item in session.slate().items[:3]:
        seen.append(item)
        result = session.on_event(item)
        check_slate(session)
        assert not result.requested and not result.decision.request
    assert session.policy_state().remaining == 9
    assert math.isfinite(session.last_score) and session.last_score >= 16.0  # lsc4rec penalty base


def test_fusion_modes_order_the_slate(reranker):
    cands = response(range(1, 13))
    llm = make(reranker, candidates=cands, config=SessionConfig(slate_size=5, num_candidates=12,
                                                                 fusion=FusionConfig(rule="llm")))
    llm.on_event(20)
    assert llm.slate().items == (1, 2, 3, 4, 5)
    srm = make(reranker, candidates=cands, config=SessionConfig(slate_size=5, num_candidates=12,
                                                                 fusion=FusionConfig(rule="srm")))
    srm.on_event(20)
    logits = reranker.score(np.array([[0] * 7 + [20]]), np.arange(1, 13)[None])[0]
    assert srm.slate().items == tuple(int(i) for i in np.argsort(-logits, kind="stable")[:5] + 1)


def test_fewer_than_k_candidates_forces_a_request(reranker):
    source = FakeSource()
    session = make(reranker, source=source, candidates=response([1, 2, 3, 4, 5]))
    result = session.on_event(1)
    assert result.decision.request and "K=5" in result.decision.reason and result.requested
    assert session.policy_state().remaining == 12


def test_unknown_event_is_rejected_without_changing_state(reranker):
    session = make(reranker, candidates=response(range(1, 13)))
    before = session.slate()
    for bad in (0, -3):  # (an id beyond the SRM's catalogue is a new item: tests/device/test_session_growth.py)
        with pytest.raises(UnknownItemError):
            session.on_event(bad)
    assert session.history == [] and session.slate() == before
    with pytest.raises(UnknownItemError):
        make(reranker, history=(1, 0))


@pytest.mark.parametrize("items, error", [
    ((1, 2, 2, 3), InvalidArgumentError),
    ((1, 2, 0), UnknownItemError),
    ((), InvalidArgumentError),
])
def test_misbehaving_server_list_is_rejected_and_cache_kept(reranker, items, error):
    session = make(reranker, candidates=response(range(1, 13)))
    session.on_event(1)
    kept = session.slate().items
    with pytest.raises(error):
        session.apply_candidates(response(items))
    slate = check_slate(session)
    assert slate.items == kept and slate.stale and session.needs_refresh


def test_list_of_only_consumed_items_is_rejected(reranker):
    session = make(reranker, history=(1, 2), candidates=response(range(3, 15)))
    with pytest.raises(InvalidArgumentError):
        session.apply_candidates(response([1, 2]))
    session.apply_candidates(response([1, 2, 7]))  # consumed ones are dropped, the rest is used
    assert check_slate(session).items == (7,)


def test_misbehaving_server_in_synchronous_use_is_a_safe_fallback(reranker):
    source = FakeSource()
    session = make(reranker, policy=Always(), source=source, candidates=response(range(1, 13)))
    source.bad = (5, 5, 6)
    result = session.on_event(1)
    assert result.requested and result.request_ok is False and "duplicates" in result.note
    assert result.slate.stale and 1 not in result.slate.items and len(result.slate.items) == 5


def test_cloud_failure_keeps_cache_backs_off_and_sends_offline_events(reranker):
    clock, source = Clock(), FakeSource()
    config = SessionConfig(user_id="u1", slate_size=5, num_candidates=12, backoff_initial_ms=1000, backoff_max_ms=4000)
    session = make(reranker, policy=Always(), source=source, clock=clock, config=config,
                   candidates=response(range(1, 13)))
    source.fail = True
    r1 = session.on_event(1)
    assert r1.requested and r1.request_ok is False and r1.slate.stale and len(r1.slate.items) == 5
    clock.t = 500
    r2 = session.on_event(2)
    assert not r2.requested and "backing off" in r2.note and r2.slate.stale
    check_slate(session)
    clock.t = 1000
    assert session.on_event(3).requested  # second failure: back-off doubles to 2000 ms
    clock.t = 2500
    assert not session.on_event(4).requested
    clock.t = 3000
    source.fail = False
    r5 = session.on_event(5)
    assert r5.requested and r5.request_ok and not r5.slate.stale
    assert source.requests[-1].history == (1, 2, 3, 4, 5)  # nothing done offline was lost
    assert not session.needs_refresh and session.events_since_list == 0
    check_slate(session)


def test_failed_request_is_retried_even_if_the_policy_no_longer_asks(reranker):
    clock, source = Clock(), FakeSource()
    session = make(reranker, policy=EveryN(1), source=source, clock=clock, candidates=response(range(1, 13)))
    source.fail = True
    session.on_event(1)
    session.policy = Never()
    source.fail = False
    clock.t = 5000
    result = session.on_event(2)
    assert result.requested and result.request_ok and not result.decision.request and "retrying" in result.note
    assert "cloud down" in session.last_error


def test_driven_use_batches_requests_at_one_instant(reranker):
    clock = Clock()
    policy = RandomRate(0.5, seed=3)
    sessions = [make(reranker, policy=policy, clock=clock,
                     config=SessionConfig(user_id=f"u{u}", slate_size=5, num_candidates=12),
                     candidates=response(range(1, 13))) for u in range(8)]
    for step in range(4):
        for n, session in enumerate(sessions):
            result = session.on_event(13 + (n + step) % 15)
            assert not result.requested
        due = [s for s in sessions if s.needs_refresh and s.ready_to_request()]
        requests = [s.build_request() for s in due]
        answers = [response([i for i in range(NUM_ITEMS, 0, -1) if i not in r.history][:12]) for r in requests]
        for session, answer in zip(due, answers):
            session.apply_candidates(answer)
            assert not session.needs_refresh and not session.stale
        for session in sessions:
            check_slate(session)
    assert sum(s.requests_sent for s in sessions) > 0
    sessions[0].on_event(1)
    sessions[0].report_failure(UnavailableError("x"))
    assert sessions[0].stale and not sessions[0].ready_to_request()


class BrokenReranker:
    """Returns NaN scores: the session falls back to the LLM order."""

    def __init__(self, inner):
        self.inner, self.manifest = inner, inner.manifest

    @property
    def history_length(self):
        return self.inner.history_length

    def score(self, histories, candidates):
        return np.full(candidates.shape, np.nan, dtype=np.float32)


def test_srm_failure_falls_back_to_llm_order(reranker):
    session = make(BrokenReranker(reranker), candidates=response(range(1, 13)))
    result = session.on_event(2)
    assert result.slate.mode == "llm" and result.slate.items == (1, 3, 4, 5, 6)
    assert math.isnan(result.decision.score)


def test_budget_policy_in_sessions_meets_its_rate(reranker):
    rng = np.random.default_rng(0)
    policy = Budget(0.2, window=200)
    clock = Clock()
    sessions = [make(reranker, policy=policy, clock=clock, source=FakeSource(),
                     config=SessionConfig(user_id=f"u{u}", slate_size=5, num_candidates=12)) for u in range(40)]
    for s in sessions:
        s.refresh()
    requests = decisions = 0
    for _ in range(10):
        for s in sessions:
            pool = [i for i in range(1, NUM_ITEMS + 1) if i not in s.history]
            result = s.on_event(int(rng.choice(pool)))
            decisions += 1
            requests += result.requested
    assert abs(requests / decisions - 0.2) <= 0.05  # 400 decisions: a loose bound; the policy test is tight


def test_session_config_is_checked():
    with pytest.raises(ConfigError):
        SessionConfig(slate_size=0)
    with pytest.raises(ConfigError):
        SessionConfig(slate_size=20, num_candidates=10)
    with pytest.raises(ConfigError):
        SessionConfig(measure="cosine")


class RaisingReranker(BrokenReranker):
    def score(self, histories, candidates):
        raise UnavailableError("runtime failed")


def test_srm_runtime_error_falls_back_to_llm_order(reranker):
    session = make(RaisingReranker(reranker), candidates=response(range(1, 13)))
    assert session.on_event(1).slate.items == (2, 3, 4, 5, 6)


def test_model_swapped_by_holder_is_used_from_the_next_event(reranker, onnx_dir_v2, tmp_path):
    from device.runtime.artifact import ModelHolder
    from shared.manifest import read_manifest

    holder = ModelHolder(reranker, tmp_path / "models")
    session = make(holder, candidates=response(range(1, 13)))
    assert session.on_event(20).slate.model_version == "v1"
    manifest = read_manifest(onnx_dir_v2)
    data = (onnx_dir_v2 / manifest.file_name).read_bytes()
    assert holder.check_for_update(lambda current: manifest, lambda m: [data]).status == "updated"
    slate = session.on_event(21).slate
    assert slate.model_version == "v2" and session.build_request().device_model_version == "v2"


class Recording(BrokenReranker):
    """The real model, keeping a copy of every history it is given."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen = []

    def score(self, histories, candidates):
        self.seen.append(histories.copy())
        return self.inner.score(histories, candidates)


def test_model_input_is_the_padded_recent_history_on_every_event(reranker):
    model = Recording(reranker)
    session = make(model, history=(30, 29, 28), candidates=response(range(1, 13)))
    for item in (1, 20, 2, 21, 3, 22, 4, 23, 5, 24, 6, 25, 20):  # listed and unlisted items; outgrows T = 8
        session.on_event(item)
        assert model.seen[-1].tolist() == pad_left([session.history], HISTORY_LENGTH).tolist()
        check_slate(session)


def test_swapped_model_with_another_history_length_scores_like_a_fresh_session(reranker, tmp_path):
    from device.runtime.artifact import ModelHolder
    from shared.manifest import read_manifest

    short = write_artifact(tmp_path / "short", history_length=5, seed=1, version="v5")
    holder = ModelHolder(reranker, tmp_path / "models")
    session = make(holder, history=(30, 29, 28, 27), candidates=response(range(1, 13)))
    session.on_event(1)
    manifest = read_manifest(short)
    data = (short / manifest.file_name).read_bytes()
    assert holder.check_for_update(lambda current: manifest, lambda m: [data]).status == "updated"
    slate = session.on_event(20).slate
    fresh = make(load_reranker(short, vocab_hash=VOCAB_HASH), history=tuple(session.history),
                 candidates=response(range(1, 13)))
    assert slate.mode == "fusion" and slate.model_version == "v5"
    assert (slate.items, slate.scores) == (fresh.slate().items, fresh.slate().scores)
    assert session.last_score == fresh.last_score


def test_regret_measure_scores_the_catalogue_without_consumed_items(reranker):
    config = SessionConfig(user_id="u1", slate_size=5, num_candidates=12, measure="regret")
    session = make(reranker, config=config, history=(30, 29), candidates=response(range(1, 13)))
    catalogue = np.arange(1, NUM_ITEMS + 1)[None]
    for item in (1, 20, 2, 29, 3, 21):
        session.on_event(item)
        logits = reranker.score(pad_left([session.history], HISTORY_LENGTH), catalogue)[0].astype(np.float64)
        pool = [i for i in range(1, 13) if i not in session.history]
        expected = consistency.catalogue_regret(np.concatenate([[0.0], logits]), pool, session.history, k=5)
        assert session.last_score == expected



def test_miss_measures_follow_the_items_consumed_since_the_list_arrived(reranker):
    config = SessionConfig(user_id="u1", slate_size=5, num_candidates=12, measure="miss")
    session = make(reranker, config=config, history=(30, 29), candidates=response(range(1, 13)))
    assert session.on_event(3) is not None and session.last_score == 0.0  # in the list: a hit
    session.on_event(20)  # not in the list: a miss now
    assert session.last_score == 1.0
    session.on_event(4)  # a hit; the miss is one event old
    assert session.last_score == 0.5
    session.apply_candidates(response(range(5, 17)))  # a fresh list forgets the misses of the old one
    session.on_event(16)
    assert session.last_score == 0.0
    depth = make(reranker, config=SessionConfig(user_id="u1", slate_size=5, num_candidates=12, measure="miss-depth"),
                 candidates=response(range(1, 13)))
    depth.on_event(7)  # slot 6 of 12
    assert depth.last_score == pytest.approx(0.5)
    depth.on_event(25)
    assert depth.last_score == pytest.approx(1.0 + 0.25)


def test_held_measures_score_the_first_and_the_cached_list(reranker):
    config = SessionConfig(user_id="u1", slate_size=3, num_candidates=6, measure="held-mass")
    session = make(reranker, config=config, history=(30,), candidates=response(range(1, 7)))
    session.on_event(2)
    assert session.last_score == pytest.approx(0.0)  # only one list held: all its mass is in the cached list
    session.apply_candidates(response(range(5, 11)))
    session.on_event(9)
    held = np.array([5, 6, 7, 8, 10, 1, 3, 4])  # the cached list's unconsumed items, then the first list's others
    logits = reranker.score(pad_left([session.history], HISTORY_LENGTH), held[None])[0].astype(np.float64)
    in_list = np.arange(held.size) < 5
    assert session.last_score == pytest.approx(consistency.held_mass_gap(logits, in_list))
    regret = make(reranker, config=SessionConfig(user_id="u1", slate_size=3, num_candidates=6, measure="held-regret"),
                  history=(30,), candidates=response(range(1, 7)))
    regret.apply_candidates(response(range(5, 11)))
    regret.on_event(2)
    held = np.array([5, 6, 7, 8, 9, 10, 1, 3, 4])
    logits = reranker.score(pad_left([regret.history], HISTORY_LENGTH), held[None])[0].astype(np.float64)
    assert regret.last_score == pytest.approx(consistency.held_regret(logits, np.arange(held.size) < 6, 3))

class BuryingReranker:
    """Scores item 7 far below every other candidate, as a model does for an item it never trained on."""

    def __init__(self, inner, untrained=()):
        import dataclasses

        self.inner, self.manifest = inner, dataclasses.replace(inner.manifest, untrained_items=tuple(untrained))

    @property
    def history_length(self):
        return self.inner.history_length

    def score(self, histories, candidates):
        scores = np.asarray(self.inner.score(histories, candidates), dtype=np.float32)
        return np.where(candidates == 7, scores.min() - 100.0, scores)


def test_an_item_the_model_never_trained_on_is_placed_by_the_cloud_not_buried(reranker):
    config = SessionConfig(user_id="u1", slate_size=5, num_candidates=12,
                           fusion=FusionConfig(alpha=0.5, llm_norm="logprob", srm_norm="logit"))
    lists = response([7, *range(8, 19)])  # the cloud ranks item 7 first (score 0; the others -1, -2, ...)
    buried = make(BuryingReranker(reranker), config=config, candidates=lists).on_event(2).slate
    placed = make(BuryingReranker(reranker, untrained=(7,)), config=config, candidates=lists).on_event(2).slate
    assert 7 not in buried.items and 7 in placed.items
