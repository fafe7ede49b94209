"""A grown catalogue on the device: candidates and history items beyond the SRM's num_items (new items the cloud
knows) are ranked like untrained items (neutral SRM score), never dropped, and never reach the SRM's input."""
import numpy as np
import pytest

from device.runtime.artifact import load_reranker
from device.runtime.client import CloudClient, ClientConfig
from device.runtime.fusion import FusionConfig, neutral_untrained, untrained_in, untrained_mask
from device.runtime.policies.never import Never
from device.runtime.session import DeviceSession, SessionConfig
from shared import wire
from shared.errors import UnknownItemError
from shared.records import Candidate, CandidateResponse
from shared.rpc import lsc4rec_pb2 as pb
from shared.sequences import pad_left
from tests.device.conftest import HISTORY_LENGTH, NUM_ITEMS, VOCAB_HASH

NEW = (NUM_ITEMS + 1, NUM_ITEMS + 2, NUM_ITEMS + 7)  # items the cloud added after the SRM was made
SRM_ONLY = FusionConfig(rule="linear", alpha=0.0, srm_norm="logit")  # fused score = the SRM logit it was given


@pytest.fixture(scope="module")
def reranker(onnx_dir):
    return load_reranker(onnx_dir, vocab_hash=VOCAB_HASH)


def response(items):
    return CandidateResponse(tuple(Candidate(int(i), -float(n)) for n, i in enumerate(items)), "g-grown", 1.0)


def session(reranker, candidates, fusion=SRM_ONLY, history=(), measure="lsc4rec", slate_size=None):
    k = slate_size or len(candidates.candidates)
    config = SessionConfig(user_id="u", slate_size=k, num_candidates=max(k, len(candidates.candidates)),
                           fusion=fusion, measure=measure)
    return DeviceSession(config, reranker, Never(), lambda: 0.0, None, history=history, candidates=candidates)


def srm_logits(reranker, history, items):
    window = pad_left([[i for i in history if i <= NUM_ITEMS]], HISTORY_LENGTH)
    return reranker.score(window, np.asarray(items)[None])[0].astype(np.float64)


def test_new_items_in_a_list_are_all_ranked_with_the_neutral_srm_score(reranker):
    known = [5, 9, 12, 3]
    items = [NEW[0], *known[:2], NEW[1], *known[2:], NEW[2]]
    s = session(reranker, response(items))
    result = s.on_event(1)
    slate = result.slate
    assert sorted(slate.items) == sorted(items) and slate.mode == "fusion"  # none dropped
    scores = dict(zip(slate.items, slate.scores))
    logits = srm_logits(reranker, [1], known)
    assert np.allclose([scores[i] for i in known], logits)
    for new in NEW:  # neutral: the mean of the list's trained items, as an untrained item gets
        assert scores[new] == pytest.approx(logits.mean())


def test_fusion_places_new_items_by_the_llm_term(reranker):
    items = [NEW[0], 4, 6, 8, 10, NEW[1]]  # the cloud ranks a new item first
    fusion = FusionConfig(rule="linear", alpha=0.5, llm_norm="logprob", srm_norm="logit")
    slate = session(reranker, response(items), fusion=fusion, slate_size=3).on_event(2).slate
    assert NEW[0] in slate.items


def test_a_list_of_new_items_only_is_shown_in_the_llm_order(reranker):
    s = session(reranker, response(NEW), fusion=FusionConfig())  # the reference rule
    assert s.on_event(3).slate.items == NEW


def test_new_items_in_the_history_are_kept_sent_and_left_out_of_the_srm_input(reranker):
    known = [5, 9, 12, 3, 14, 17]
    plain = session(reranker, response(known))
    grown = session(reranker, response(known), history=(NEW[2],))
    for item in (2, NEW[0], 7):
        grown.on_event(item)
    for item in (2, 7):
        plain.on_event(item)
    assert grown.history == [NEW[2], 2, NEW[0], 7]
    assert grown.build_request().history == (NEW[2], 2, NEW[0], 7)
    assert grown.slate().items == plain.slate().items and grown.slate().scores == plain.slate().scores


def test_a_consumed_new_item_leaves_the_list_like_any_other(reranker):
    s = session(reranker, response([NEW[0], 4, 6, NEW[1]]))
    s.on_event(NEW[0])
    assert NEW[0] not in s.slate().items and sorted(s.slate().items) == [4, 6, NEW[1]]


def test_the_catalogue_measure_runs_beside_new_items(reranker):
    s = session(reranker, response([NEW[0], 4, 6, 8, NEW[1]]), measure="regret", history=(NEW[2],))
    result = s.on_event(NEW[1])
    assert np.isfinite(s.last_score) and len(result.slate.items) == 4


def test_untrained_in_marks_ids_past_the_models_catalogue():
    items = np.array([1, 3, 5, 6, 9])
    mask = untrained_mask([3], 5)
    assert untrained_in(items, mask, 5).tolist() == [False, True, False, True, True]
    assert untrained_in(items, None, 5).tolist() == [False, False, False, True, True]
    assert untrained_in(items[:3], None, 5) is None
    logits = np.array([1.0, -9.0, 3.0, 0.0, 0.0])
    assert neutral_untrained(items, logits, mask, 5).tolist() == [1.0, 2.0, 3.0, 2.0, 2.0]


def test_the_device_client_accepts_ids_beyond_what_it_knows():
    msg = pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=NUM_ITEMS + 40, score=-1.0),
                                               pb.Candidate(item_id=2, score=-2.0)], generator_version="g")
    assert [c.item for c in wire.response_from_pb(msg, None).candidates] == [NUM_ITEMS + 40, 2]
    with CloudClient(ClientConfig(address="127.0.0.1:1")) as client:
        assert client.num_items is None
    with pytest.raises(UnknownItemError, match="ids start at 1"):
        wire.response_from_pb(pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=0)]), None)
