"""Wire conversion: round trips, and every field validated with its name in the error."""
import dataclasses
import pytest

from shared import wire
from shared.errors import InvalidArgumentError, ManifestError, UnknownItemError
from shared.records import Candidate, CandidateRequest, CandidateResponse, ModelFormat, ModelManifest, TensorSpec
from shared.rpc import lsc4rec_pb2 as pb


def _request(**kw):
    base = dict(user_id="u1", history=(1, 2, 3), num_candidates=5, exclude=(4,), request_id="r", device_model_version="v")
    base.update(kw)
    return CandidateRequest(**base)


def test_request_round_trip():
    request = _request()
    assert wire.request_from_pb(wire.request_to_pb(request), num_items=10, max_history=50, max_candidates=100) == request


@pytest.mark.parametrize("change, field", [
    (dict(user_id=""), "user_id"),
    (dict(history=(1, 11)), "history[1]"),
    (dict(history=(0,)), "history[0]"),
    (dict(exclude=(-3,)), "exclude[0]"),
    (dict(num_candidates=0), "num_candidates"),
    (dict(num_candidates=7), "num_candidates"),  # 10 items - 4 blocked = 6 at most
    (dict(request_id="x" * 300), "request_id"),
])
def test_request_validation_names_the_field(change, field):
    msg = wire.request_to_pb(_request(**change))
    with pytest.raises(InvalidArgumentError) as info:
        wire.request_from_pb(msg, num_items=10, max_history=50, max_candidates=100)
    assert info.value.field == field and field in str(info.value)


def test_history_longer_than_the_maximum():
    with pytest.raises(InvalidArgumentError, match="history"):
        wire.request_from_pb(wire.request_to_pb(_request(history=(1, 2, 3))), 10, max_history=2, max_candidates=5)


def test_response_round_trip_and_misbehaving_server():
    response = CandidateResponse((Candidate(3, -0.5), Candidate(1, -1.0)), "gen-1", 2.5, "r")
    assert wire.response_from_pb(wire.response_to_pb(response), num_items=5) == response
    dup = pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=2), pb.Candidate(item_id=2)])
    with pytest.raises(InvalidArgumentError, match="duplicates"):
        wire.response_from_pb(dup, num_items=5)
    with pytest.raises(UnknownItemError):
        wire.response_from_pb(pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=9)]), num_items=5)
    with pytest.raises(InvalidArgumentError, match="finite"):
        wire.response_from_pb(pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=1, score=float("nan"))]), 5)


def _manifest():
    return ModelManifest(
        model_name="sasrec", version="20260101T000000.000000Z-abcdef12", format=ModelFormat.ONNX,
        file_name="model.onnx", sha256="a" * 64, size_bytes=10,
        inputs=(TensorSpec("history", "int64", ("batch", 50)), TensorSpec("candidates", "int64", ("batch", "n"))),
        outputs=(TensorSpec("scores", "float32", ("batch", "n")),), history_length=50, num_items=1682,
        vocab_hash="0123456789abcdef", created_at="2026-01-01T00:00:00Z", metrics={"ndcg@10": 0.07})


def test_manifest_round_trip_and_format_enum():
    manifest = _manifest()
    assert wire.manifest_from_pb(wire.manifest_to_pb(manifest)) == manifest
    with_untrained = dataclasses.replace(manifest, untrained_items=(2, 40))
    assert wire.manifest_from_pb(wire.manifest_to_pb(with_untrained)) == with_untrained
    assert wire.format_from_pb(pb.MODEL_FORMAT_UNSPECIFIED) is ModelFormat.ONNX
    with pytest.raises(InvalidArgumentError):
        wire.format_from_pb(77)
    broken = wire.manifest_to_pb(manifest)
    broken.sha256 = "zz"
    with pytest.raises(ManifestError, match="sha256"):
        wire.manifest_from_pb(broken)
