"""Hostile input: request validation and data readers raise only typed errors; raw bytes never hurt the server.

Properties run 2,000 hypothesis examples each; the raw-bytes test sends 1,000 random byte strings to
each RPC over loopback and then checks the server still serves and reports SERVING.
"""
from __future__ import annotations

import collections
import json
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.server import ServerConfig, create_server
from shared import wire
from shared.data.readers import READERS
from shared.errors import LSC4RecError
from shared.records import CandidateRequest
from shared.rpc import lsc4rec_pb2 as pb
from tests.reliability.harness import NUM_ITEMS, DelayGenerator

pytestmark = pytest.mark.fault
EXAMPLES = 2000
DEFAULT_READER_EXAMPLES = 300  # per reader in the default run (2,000 with -m fault; file I/O per example)
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

SEED = st.integers(0, 2**32 - 1)  # each example draws a seed; a seeded generator builds the input (fast)
HOSTILE_INTS = [0, -1, -(2**63), 2**63 - 1, NUM_ITEMS, NUM_ITEMS + 1, 2**31, -(2**31)]


def _items(rng: random.Random) -> list[int]:
    pool = HOSTILE_INTS + list(range(1, NUM_ITEMS + 1))
    return [rng.choice(pool) if rng.random() < 0.2 else rng.randint(1, NUM_ITEMS) for _ in range(rng.randint(0, 40))]


def _text(rng: random.Random) -> str:
    return rng.choice(["", "u", "\x00", "\u00e9\U0001f600", "x" * rng.randint(250, 260), str(rng.random())])


@PROPERTY
@given(SEED)
def test_request_validation_raises_only_typed_errors(seed):
    rng = random.Random(seed)
    max_history, max_candidates = rng.randint(1, 50), rng.randint(1, 300)
    msg = pb.GetCandidatesRequest(
        user_id=_text(rng), history=_items(rng), exclude=_items(rng)[: rng.randint(0, 10)],
        num_candidates=rng.choice([rng.randint(-3, NUM_ITEMS + 3), rng.randint(-(2**31), 2**31 - 1)]),
        request_id=_text(rng), device_model_version=_text(rng))
    try:
        req = wire.request_from_pb(msg, NUM_ITEMS, max_history, max_candidates)
    except LSC4RecError:
        return
    assert isinstance(req, CandidateRequest)  # accepted: then it is within every limit
    assert req.user_id and len(req.history) <= max_history
    assert all(1 <= i <= NUM_ITEMS for i in req.history + req.exclude)
    assert 1 <= req.num_candidates <= min(max_candidates, NUM_ITEMS - len(set(req.history) | set(req.exclude)))


def _peer_bytes(rng: random.Random) -> bytes:
    """Random bytes, or a valid answer / manifest with a few bytes changed (so decoding gets further)."""
    if rng.random() < 0.3:
        return rng.randbytes(rng.randrange(300))
    if rng.random() < 0.5:
        msg = pb.GetCandidatesResponse(candidates=[pb.Candidate(item_id=rng.choice(HOSTILE_INTS + [1, 2, 3]),
                                                                score=rng.choice([0.5, float("nan"), float("inf")]))
                                                   for _ in range(rng.randrange(5))], generator_version="g")
    else:
        msg = pb.ModelManifest(model_name="m", version="v", format=rng.randrange(4), file_name=rng.choice(
            ["model.onnx", "../x", "", ".hidden"]), sha256="a" * rng.choice([64, 63]), size_bytes=rng.randrange(-1, 9),
            inputs=[pb.TensorSpec(name="history", dtype="int64", shape=[-1, 8], dim_names=["batch", ""][: rng.randrange(3)])],
            history_length=rng.randrange(-1, 9), num_items=NUM_ITEMS, vocab_hash="h", created_at="t")
    data = bytearray(msg.SerializeToString())
    for _ in range(rng.randrange(3)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


@PROPERTY
@given(SEED)
def test_responses_and_manifests_from_hostile_peers_raise_only_typed_errors(seed):
    """A device parsing a server's answer: anything that decodes is validated with typed errors."""
    data = _peer_bytes(random.Random(seed))
    for kind, convert in ((pb.GetCandidatesResponse, lambda m: wire.response_from_pb(m, NUM_ITEMS)),
                          (pb.ModelManifest, wire.manifest_from_pb)):
        try:
            msg = kind.FromString(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: grpc maps it before our code runs
            continue
        try:
            convert(msg)
        except LSC4RecError:
            pass


# --- data readers ----------------------------------------------------------------------------

# reader -> (data file, side file, separator, data header, data row fields, side row builder)
FILES = {
    "recbole": ("d.inter", "d.item", "\t", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                ("user", "item", "rating", "ts"), "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"),
    "movielens-100k-raw": ("u.data", "u.item", "\t", None, ("user", "item", "rating", "ts"), None),
    "movielens-1m": ("ratings.dat", "movies.dat", "::", None, ("user", "item", "rating", "ts"), None),
    "amazon-2018": ("reviews.json", "meta_x.json", None, None,
                    ("reviewerID", "asin", "overall", "unixReviewTime"), None),
    "amazon-2023": ("reviews.jsonl", "meta_x.jsonl", None, None,
                    ("user_id", "parent_asin", "rating", "timestamp"), None),
    "csv": ("data.csv", None, ",", "user,item,timestamp,title", ("user", "item", "ts", "title"), None),
}
HOSTILE = ["", " ", "-1", "0", "1e3", "3.5", "nan", "inf", "99999999999999999999999", "-9223372036854775809",
           "abc", "\u00e9", "\x00", "\"", "Toy Story (1995)", "(", "1995)", "||", "::", "\t", ",", "{", "null"]
JSON_HOSTILE = [None, True, 1.5, float("nan"), 2**70, -(2**63) - 1, "", "x", [1, 2], {"a": 1}, "1700000000000"]


def _value(field: str, rng: random.Random):
    """A plausible value for the field (ids, ratings, timestamps, titles)."""
    if field in ("ts", "unixReviewTime", "timestamp"):
        return rng.randint(0, 2_000_000_000_000)
    if field in ("rating", "overall"):
        return rng.choice([1, 2, 3, 4, 5, 3.5])
    if field == "title":
        return f"Movie {rng.randint(1, 9)} ({rng.randint(1900, 2030)})"
    return f"{field[0]}{rng.randint(1, 20)}"


def _text_row(fields, sep: str, rng: random.Random) -> str:
    values = [str(_value(f, rng)) for f in fields]
    roll = rng.random()
    if roll < 0.4:  # one hostile field
        values[rng.randrange(len(values))] = rng.choice(HOSTILE)
    elif roll < 0.5:  # too few / too many fields
        values = values[: rng.randrange(len(values))] if rng.random() < 0.5 else values + ["extra"]
    return sep.join(values)


def _json_row(fields, rng: random.Random) -> str:
    row = {f: _value(f, rng) for f in fields if rng.random() < 0.9}
    if rng.random() < 0.4:
        row[rng.choice(fields)] = rng.choice(JSON_HOSTILE)
    text = json.dumps(row)
    return text[: rng.randrange(len(text))] if rng.random() < 0.1 else text


def _content(name: str, rng: random.Random) -> bytes:
    """Mostly-valid lines with hostile fields, sometimes a wrong header, sometimes raw bytes."""
    _, _, sep, header, fields, _ = FILES[name]
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    lines = [] if header is None else [header if rng.random() < 0.8 else rng.choice(HOSTILE)]
    for _ in range(rng.randrange(6)):
        lines.append(_json_row(fields, rng) if sep is None else _text_row(fields, sep, rng))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _side(name: str, rng: random.Random) -> bytes | None:
    if rng.random() < 0.5:
        return None
    if name == "movielens-100k-raw":
        flags = "|".join(rng.choice(["0", "1", "1", "2", ""]) for _ in range(19))
        rows = [f"i{rng.randint(1, 20)}|Movie ({rng.choice(['1995', 'x', ''])})|01-Jan-1995||http://x|{flags}"]
    elif name == "movielens-1m":
        rows = [f"i{rng.randint(1, 20)}::Movie ({rng.choice(['1995', 'x'])})::Drama|Comedy", rng.choice(HOSTILE)]
    elif name.startswith("amazon"):
        key = "asin" if name.endswith("2018") else "parent_asin"
        rows = [_json_row((key, "title", "categories", "category", "main_cat"), rng)]
    else:
        rows = [FILES[name][5] or "", f"i{rng.randint(1, 20)}\t{rng.choice(HOSTILE)}\t1995\tDrama"]
    return "\n".join(rows * rng.randint(1, 3)).encode("utf-8", "surrogatepass")


def _reader_property(name: str, examples: int):
    data_name, side_name = FILES[name][:2]
    folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    seen = collections.Counter()

    @settings(PROPERTY, max_examples=examples)
    @given(SEED)
    def prop(seed):
        rng = random.Random(seed)
        (folder / data_name).write_bytes(_content(name, rng))
        if side_name:
            side = _side(name, rng)
            if side is None:
                (folder / side_name).unlink(missing_ok=True)
            else:
                (folder / side_name).write_bytes(side)
        try:
            events, items = READERS.get(name)(folder / data_name)
            rows = list(events)
        except LSC4RecError as exc:
            seen[type(exc).__name__] += 1
            return
        seen["ok"] += 1
        assert all(isinstance(u, str) and isinstance(i, str) and isinstance(t, int) for u, i, t in rows)
        assert isinstance(items, dict)

    try:
        prop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return seen


@pytest.mark.parametrize("examples", [DEFAULT_READER_EXAMPLES, pytest.param(EXAMPLES, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(FILES))
def test_data_readers_raise_only_typed_errors(name, examples):
    assert set(FILES) == set(READERS.names())
    seen = _reader_property(name, examples)
    print(json.dumps({"figure": "hostile.reader", "reader": name, "examples": sum(seen.values()), **seen}))
    assert sum(seen.values()) == examples
    assert seen["ok"] >= examples // 20  # the generator gets past the headers, not only into the first check


# --- raw bytes to every RPC ------------------------------------------------------------------

METHODS = {
    "/lsc4rec.v1.CandidateService/GetCandidates": (False, pb.GetCandidatesRequest),
    "/lsc4rec.v1.ModelService/GetLatestManifest": (False, pb.GetLatestManifestRequest),
    "/lsc4rec.v1.ModelService/DownloadModel": (True, pb.DownloadModelRequest),
}
ALLOWED = {"INVALID_ARGUMENT", "INTERNAL", "RESOURCE_EXHAUSTED"}


def _random_payloads(count: int, seed: int, valid: bytes) -> list[bytes]:
    """Random lengths and bytes, half of them mutations of a valid message (so parsing gets further)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        if n % 2 == 0:
            out.append(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        else:
            data = bytearray(valid)
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            out.append(bytes(data[: int(rng.integers(1, len(data) + 1))]))
    return out


def _parses(kind, data: bytes) -> bool:
    try:
        kind.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError
        return False
    return True


def test_raw_random_bytes_to_each_rpc_give_only_error_codes_and_server_stays_healthy(good_model, tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(good_model, models_dir / "onnx-v1")
    server, port = create_server(ServerConfig(address="127.0.0.1:0", grace_s=0.0), DelayGenerator(),
                                 models_dir, address="127.0.0.1:0")
    valid = {"/lsc4rec.v1.CandidateService/GetCandidates": pb.GetCandidatesRequest(
                 user_id="u", history=[1, 2, 3], num_candidates=5, request_id="r").SerializeToString(),
             "/lsc4rec.v1.ModelService/GetLatestManifest": pb.GetLatestManifestRequest(
                 format=pb.MODEL_FORMAT_ONNX, current_version="v0").SerializeToString(),
             "/lsc4rec.v1.ModelService/DownloadModel": pb.DownloadModelRequest(
                 version="v1", format=pb.MODEL_FORMAT_ONNX).SerializeToString()}
    figures = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(8) as pool:
            for method, (streaming, kind) in METHODS.items():
                call = (channel.unary_stream if streaming else channel.unary_unary)(method)

                def send(data: bytes) -> str:
                    try:
                        reply = call(data, timeout=5)
                        if streaming:
                            list(reply)
                    except grpc.RpcError as exc:
                        return exc.code().name
                    return "OK"

                payloads = _random_payloads(1000, seed=len(method), valid=valid[method])
                codes = collections.Counter()
                for data, code in zip(payloads, pool.map(send, payloads)):  # 8 in flight at a time
                    codes[code] += 1
                    if code not in ALLOWED:  # a legitimate answer only to a message that really parses
                        assert code in {"OK", "NOT_FOUND"} and _parses(kind, data), (method, code, data)
                figures[method.rsplit("/", 1)[-1]] = dict(codes)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            ok = channel.unary_unary("/lsc4rec.v1.CandidateService/GetCandidates",
                                     response_deserializer=pb.GetCandidatesResponse.FromString)(
                valid["/lsc4rec.v1.CandidateService/GetCandidates"], timeout=5)
        print(json.dumps({"figure": "hostile.raw_bytes", "per_method": 1000, **figures}))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert len(ok.candidates) == 5
        assert all(sum(c.values()) == 1000 for c in figures.values())
    finally:
        server.stop(0)
