"""The catalogue-free device (issue 19): user-encoder export, vector cache, session, wire and server."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cloud.registry import publish
from cloud.server import ServerConfig, create_server
from device.runtime.artifact import load_reranker
from device.runtime.client import ClientConfig, CloudClient
from device.runtime.encoder import UserEncoder
from device.runtime.policies import parse_policy
from device.runtime.session import DeviceSession, SessionConfig
from device.runtime.vectors import VectorCache
from device.training.encoder_export import export_user_encoder
from device.training.export import export_one
from device.training.models.gru4rec import GRU4Rec, GRU4RecConfig
from device.training.models.sasrec import SASRec, SASRecConfig
from shared.errors import ConfigError, InvalidArgumentError, ManifestError
from shared.generator import PopularityGenerator
from shared.records import Candidate, CandidateRequest, CandidateResponse
from shared.vector_table import VECTOR_TABLE_NAME, ItemVectors, VectorError, VectorTable, quantise
from shared.wire import response_to_pb

N, T, D = 80, 12, 16


def _model(name: str):
    torch.manual_seed(3)
    if name.startswith("sasrec"):
        positions = "rotary" if name == "sasrec-rotary" else "learned"
        model = SASRec(SASRecConfig(num_items=N, max_len=T, hidden=D, heads=2, inner=32, positions=positions))
    else:
        model = GRU4Rec(GRU4RecConfig(num_items=N, max_len=T, hidden=D, gru_hidden=24))
    with torch.no_grad():  # trained-like magnitudes, so scores are not all near zero
        model.item_emb.weight.mul_(20.0)
        model.item_emb.weight[0].zero_()
    return model.eval()


@pytest.fixture(scope="module", params=["sasrec", "sasrec-rotary", "gru4rec"])
def exported(request, tmp_path_factory):
    """(model, user-encoder folder, scorer ONNX folder, table) of one architecture."""
    model = _model(request.param)
    out = tmp_path_factory.mktemp(request.param)
    folder = export_user_encoder(model, "sasrec", "vocab-test", out)
    scorer = export_one(model, "sasrec", "vocab-test", "onnx", out)
    manifest = json.loads((folder / "manifest.json").read_text())
    table = VectorTable.load(folder / VECTOR_TABLE_NAME, manifest["version"], manifest["vector_table_sha256"])
    return model, folder, scorer, table


def _source(table, items):
    class Source:
        calls: list = []

        def get_candidates(self, request):
            self.calls.append(request)
            ids = [i for i in items if i not in request.history]
            return CandidateResponse(tuple(Candidate(i, -0.1 * k) for k, i in enumerate(ids)), "gen", 1.0,
                                     request.request_id, table.lookup(ids + list(request.missing_vectors)))
    return Source()


def _session(model, source, history, measure="miss-belief"):
    return DeviceSession(SessionConfig(measure=measure, num_candidates=30, slate_size=5), model,
                         parse_policy("never"), lambda: 0.0, source=source, history=tuple(history))


def test_export_checks_and_describes_the_encoder(exported):
    model, folder, _, table = exported
    encoder = load_reranker(folder)  # verified: sha256, graph inputs, golden example with its own vectors
    assert isinstance(encoder, UserEncoder) and encoder.dim == D
    m = encoder.manifest
    assert m.kind == "user-encoder" and m.vector_dim == D and m.metrics["parity_max_abs_diff"] < 1e-4
    assert table.num_items == N and table.values.dtype == np.int8
    assert encoder.recurrent == isinstance(model, GRU4Rec)
    assert (folder / "encoder.onnx").stat().st_size < 1 << 20


def test_a_tampered_golden_or_table_is_refused(exported, tmp_path):
    _, folder, _, _ = exported
    copy = tmp_path / "enc"
    shutil.copytree(folder, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["golden"]["scores"][0] += 0.5
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="golden"):
        load_reranker(copy)
    (copy / VECTOR_TABLE_NAME).write_bytes(b"not a table")
    with pytest.raises(VectorError, match="sha256"):
        VectorTable.load(copy / VECTOR_TABLE_NAME, data["version"], data["vector_table_sha256"])


def test_incremental_state_equals_a_full_encode(exported):
    """One update per event gives the user vector of encoding the history again. Within the model's window always;
    past it, a learned-position SASRec re-encodes its sliding window (equal), a rotary one keeps keys and values
    (equal to the model over the whole history, where each item sees at most T - 1 before it), and a GRU's state
    keeps what came before the window (by design)."""
    model, folder, _, table = exported
    encoder = load_reranker(folder)
    rows = table.lookup(np.arange(1, 31)).floats()
    state = encoder.new_state()
    for n, row in enumerate(rows, start=1):
        state.append(row)
        if n <= T or encoder.shape == "window":
            np.testing.assert_allclose(state.user, encoder.encode(rows[:n])[1], atol=1e-5)
        elif encoder.shape == "cached":
            with torch.no_grad():
                whole = model._encode(torch.from_numpy(rows[:n])[None], torch.ones(1, n, dtype=torch.bool), True)
            np.testing.assert_allclose(state.user, whole[0, 0].numpy(), atol=1e-5)
    assert encoder.recurrent == (not np.allclose(state.user, encoder.encode(rows)[1], atol=1e-5))


def test_session_scores_like_the_model_with_the_catalogue(exported):
    """With every vector at hand, the catalogue-free session ranks like the scorer artifact (int8 vectors)."""
    _, folder, scorer, table = exported
    history, items = list(range(1, 9)), list(range(20, 50))
    free = _session(load_reranker(folder), _source(table, items), history)
    full = _session(load_reranker(scorer), _source(table, items), history)
    assert free.refresh() == (True, "") and full.refresh() == (True, "")
    pool = free._pool
    a, b = free._srm.logits(free._scored), full._srm.logits(pool)
    if free.reranker.recurrent:
        # the scorer reads the window's left padding first, the step graph does not: close, not equal
        assert np.corrcoef(a, b)[0, 1] > 0.9
    else:
        assert np.max(np.abs(a - b)) <= 0.02 * np.max(np.abs(b))


def test_missing_vectors_are_asked_for_and_the_state_rebuilt(exported):
    _, folder, _, table = exported
    items = list(range(20, 50))
    source = _source(table, items)
    session = _session(load_reranker(folder), source, range(1, 6))
    session.refresh()
    assert set(source.calls[0].missing_vectors) == set(range(1, 6)) and source.calls[0].with_vectors
    session.on_event(70)  # not in the list: no vector on the device
    request = session.build_request()
    assert request.missing_vectors == (70,)
    before = session._srm.state.user.copy()
    session.apply_candidates(source.get_candidates(request))
    assert not np.allclose(before, session._srm.state.user)  # 70 is in the state now
    reference = _session(load_reranker(folder), _source(table, items), [1, 2, 3, 4, 5, 70])
    reference.refresh()
    np.testing.assert_allclose(session._srm.state.user, reference._srm.state.user, atol=1e-5)


def test_vectors_that_do_not_fit_are_refused_and_nothing_is_lost(exported):
    _, folder, _, table = exported
    items = list(range(20, 50))
    session = _session(load_reranker(folder), _source(table, items), range(1, 6))
    session.refresh()
    slate, history = session.slate(), list(session.history)
    good = table.lookup(items)
    bad = {
        "model_version": ItemVectors("other-version", D, good.item_ids, good.values, good.scales),
        "dim": ItemVectors(good.model_version, D + 1, good.item_ids, good.values, good.scales),
        "values": ItemVectors(good.model_version, D, good.item_ids, good.values[:-1], good.scales),
        "scales": ItemVectors(good.model_version, D, good.item_ids, good.values,
                              np.where(np.arange(len(good.scales)) == 0, np.nan, good.scales).astype(np.float32)),
    }
    for field, vectors in bad.items():
        response = CandidateResponse(tuple(Candidate(i, 0.0) for i in items), "gen", 1.0, "r", vectors)
        with pytest.raises(VectorError, match=field):
            session.apply_candidates(response)
        assert session.slate().items == slate.items and session.history == history and session.stale
    with pytest.raises(VectorError, match="has none"):
        session.apply_candidates(CandidateResponse(tuple(Candidate(i, 0.0) for i in items), "gen", 1.0, "r"))
    assert session.failures == 5


def test_the_cache_is_bounded_and_refuses_more_than_it_holds():
    values, scales = quantise(np.random.default_rng(0).normal(size=(10, 4)))
    cache = VectorCache(4, "v1", capacity=6)
    cache.put(ItemVectors("v1", 4, np.arange(1, 6), values[:5], scales[:5]))
    cache.get(1)  # recently used: kept
    cache.put(ItemVectors("v1", 4, np.arange(6, 9), values[5:8], scales[5:8]))
    assert len(cache) == 6 and 1 in cache and 2 not in cache and 3 not in cache
    assert cache.nbytes == 6 * 4 * 4
    with pytest.raises(VectorError, match="more than the 6"):
        cache.put(ItemVectors("v1", 4, np.arange(1, 11), values, scales))
    with pytest.raises(ConfigError, match="vector_cache"):
        SessionConfig(vector_cache=10)


def test_a_catalogue_measure_is_refused_on_a_catalogue_free_device(exported):
    _, folder, _, table = exported
    with pytest.raises(InvalidArgumentError, match="catalogue-free"):
        _session(load_reranker(folder), _source(table, [20]), [1], measure="regret")


def test_server_sends_vectors_of_the_named_version(exported, tmp_path):
    _, folder, _, _ = exported
    models = tmp_path / "models"
    publish(folder, models)
    encoder = load_reranker(folder)
    generator = PopularityGenerator.from_sequences([np.arange(1, N + 1)], N)
    server, port = create_server(ServerConfig(address="127.0.0.1:0"), generator, models)
    try:
        client = CloudClient(ClientConfig(address=f"127.0.0.1:{port}"))
        session = DeviceSession(SessionConfig(measure="miss-belief", num_candidates=50), encoder,
                                parse_policy("never"), lambda: 0.0, source=client, history=tuple(range(1, 11)))
        assert session.refresh() == (True, "") and session.slate().mode == "fusion"
        request = session.build_request()
        response = client.get_candidates(request)
        assert len(response.vectors.item_ids) == 50 and response.vectors.model_version == encoder.manifest.version
        assert response_to_pb(response).ByteSize() <= 6 * 1024
        for bad, field in ((CandidateRequest("u", (1,), 5, device_model_version="nope", with_vectors=True),
                            "device_model_version"),
                           (CandidateRequest("u", (1,), 5, device_model_version=encoder.manifest.version,
                                             with_vectors=True, missing_vectors=tuple(range(1, 300))),
                            "missing_vectors")):
            with pytest.raises(InvalidArgumentError, match=field):
                client.get_candidates(bad)
        manifest, _ = client.latest_manifest(kind="user-encoder")
        assert manifest.version == encoder.manifest.version
        client.close()
    finally:
        server.stop(0)


def test_a_new_encoder_version_from_the_cloud_is_taken_with_its_own_vectors(tmp_path):
    """ModelHolder updates a catalogue-free device too: the next event drops the old version's vectors, asks for a
    fresh list with the window's vectors of the new version, and scores with them."""
    from device.runtime.artifact import ModelHolder

    models = tmp_path / "models"
    first = export_user_encoder(_model("sasrec"), "sasrec", "vocab-test", tmp_path / "v1")
    torch.manual_seed(11)
    other = SASRec(SASRecConfig(num_items=N, max_len=T, hidden=D, heads=2, inner=32)).eval()
    second = export_user_encoder(other, "sasrec", "vocab-test", tmp_path / "v2")
    publish(first, models)
    generator = PopularityGenerator.from_sequences([np.arange(1, N + 1)], N)
    server, port = create_server(ServerConfig(address="127.0.0.1:0"), generator, models)
    try:
        client = CloudClient(ClientConfig(address=f"127.0.0.1:{port}"))
        holder = ModelHolder(load_reranker(first), tmp_path / "updates")
        session = DeviceSession(SessionConfig(measure="miss-belief", num_candidates=30, slate_size=5), holder,
                                parse_policy("never"), lambda: 0.0, source=client, history=tuple(range(1, 9)))
        assert session.refresh() == (True, "")
        old = holder.manifest.version
        assert holder.update_from_cloud(client).status == "current"
        publish(second, models)
        update = holder.update_from_cloud(client)
        assert update.status == "updated" and holder.manifest.version != old
        result = session.on_event(60)
        assert result.requested and result.request_ok, result.note
        assert session._srm.encoder is holder.current and session._srm.cache.model_version == update.version
        assert session.slate().mode == "fusion"
        client.close()
    finally:
        server.stop(0)
