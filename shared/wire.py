"""Conversion between wire messages (shared/rpc) and the project's records, validating every field.

Both sides call these: the server on requests, the device on responses and manifests, so a
misbehaving peer is caught at the boundary with the field and value named.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from shared.errors import InvalidArgumentError, ManifestError, UnknownItemError
from shared.manifest import manifest_from_dict
from shared.records import (
    Candidate,
    CandidateRequest,
    CandidateResponse,
    ModelFormat,
    ModelManifest,
    TensorSpec,
)
from shared.rpc import lsc4rec_pb2 as pb
from shared.vector_table import ItemVectors, VectorError

_FORMAT_TO_PB = {ModelFormat.ONNX: pb.MODEL_FORMAT_ONNX, ModelFormat.PTE: pb.MODEL_FORMAT_PTE}
_FORMAT_FROM_PB = {v: k for k, v in _FORMAT_TO_PB.items()}
MAX_ID_LENGTH = 256
MAX_MISSING_VECTORS = 256  # history vectors one request may ask for (a device's model window is ~50)


def check_items(field: str, items: Iterable[int], num_items: int | None) -> tuple[int, ...]:
    """Every id must lie in 1..num_items (num_items None: any id >= 1, for a device whose model may know fewer items
    than the cloud's grown catalogue); returns them as a tuple of ints."""
    out = tuple(map(int, items))
    top = math.inf if num_items is None else num_items
    if out and (min(out) < 1 or max(out) > top):  # in C: the loop below only runs to name the bad one
        for n, item in enumerate(out):
            if not 1 <= item <= top:
                reason = "ids start at 1" if num_items is None else f"catalogue is 1..{num_items}"
                raise UnknownItemError(f"{field}[{n}]", item, f"not an item id ({reason})")
    return out


def _check_text(field: str, value: str, required: bool) -> str:
    if required and not value:
        raise InvalidArgumentError(field, value, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(field, value, f"longer than {MAX_ID_LENGTH} characters")
    return value


def format_to_pb(fmt: ModelFormat) -> int:
    return _FORMAT_TO_PB[fmt]


def format_from_pb(value: int) -> ModelFormat:
    """UNSPECIFIED means ONNX; an unknown enum value is INVALID_ARGUMENT."""
    if value == pb.MODEL_FORMAT_UNSPECIFIED:
        return ModelFormat.ONNX
    if value not in _FORMAT_FROM_PB:
        raise InvalidArgumentError("format", value, "unknown model format")
    return _FORMAT_FROM_PB[value]


def request_to_pb(request: CandidateRequest) -> pb.GetCandidatesRequest:
    return pb.GetCandidatesRequest(
        user_id=request.user_id, history=request.history, num_candidates=request.num_candidates,
        exclude=request.exclude, request_id=request.request_id,
        device_model_version=request.device_model_version, with_vectors=request.with_vectors,
        missing_vectors=request.missing_vectors,
    )


def request_from_pb(msg: pb.GetCandidatesRequest, num_items: int, max_history: int,
                    max_candidates: int, max_missing_vectors: int = MAX_MISSING_VECTORS) -> CandidateRequest:
    """Validate a request against the catalogue and the server's limits."""
    user_id = _check_text("user_id", msg.user_id, required=True)
    if len(msg.history) > max_history:
        raise InvalidArgumentError("history", f"<{len(msg.history)} items>", f"longer than the maximum {max_history}")
    history = check_items("history", msg.history, num_items)
    exclude = check_items("exclude", msg.exclude, num_items)
    if len(msg.missing_vectors) > max_missing_vectors:
        raise InvalidArgumentError("missing_vectors", f"<{len(msg.missing_vectors)} ids>",
                                   f"more than the maximum {max_missing_vectors}")
    missing = check_items("missing_vectors", msg.missing_vectors, num_items)
    if missing and not msg.with_vectors:
        raise InvalidArgumentError("missing_vectors", f"<{len(missing)} ids>", "needs with_vectors")
    blocked = len(set(history) | set(exclude))
    limit = min(max_candidates, num_items - blocked)
    if not 1 <= msg.num_candidates <= limit:
        raise InvalidArgumentError("num_candidates", msg.num_candidates,
                                   f"must be in 1..{limit} (catalogue {num_items}, {blocked} items excluded, "
                                   f"server maximum {max_candidates})")
    return CandidateRequest(
        user_id=user_id, history=history, num_candidates=int(msg.num_candidates), exclude=exclude,
        request_id=_check_text("request_id", msg.request_id, required=False),
        device_model_version=_check_text("device_model_version", msg.device_model_version, required=msg.with_vectors),
        with_vectors=bool(msg.with_vectors), missing_vectors=missing,
    )


def response_to_pb(response: CandidateResponse) -> pb.GetCandidatesResponse:
    # Candidates as dicts: about a fifth less CPU than msg.candidates.add() per candidate, which in turn
    # is a third less than building a list of pb.Candidate messages first.
    msg = pb.GetCandidatesResponse(generator_version=response.generator_version,
                                   generation_ms=response.generation_ms, request_id=response.request_id,
                                   candidates=[{"item_id": c.item, "score": c.score} for c in response.candidates])
    vectors = response.vectors
    if vectors is not None:
        msg.vectors.CopyFrom(pb.ItemVectors(model_version=vectors.model_version, dim=vectors.dim,
                                            item_ids=vectors.item_ids.tolist(), values=vectors.values.tobytes(),
                                            scales=vectors.scales.tolist()))
    return msg


def response_from_pb(msg: pb.GetCandidatesResponse, num_items: int | None) -> CandidateResponse:
    """Validate a server's answer: known, distinct ids and finite scores (num_items None: any id >= 1 is known, the
    cloud's catalogue may have grown past what the caller knows)."""
    items = check_items("candidates.item_id", (c.item_id for c in msg.candidates), num_items)
    if len(set(items)) != len(items):
        raise InvalidArgumentError("candidates.item_id", items, "contains duplicates")
    scores = [c.score for c in msg.candidates]
    for n, score in enumerate(scores):
        if not math.isfinite(score):
            raise InvalidArgumentError(f"candidates[{n}].score", score, "must be finite")
    return CandidateResponse(
        candidates=tuple(Candidate(i, float(s)) for i, s in zip(items, scores)),
        generator_version=msg.generator_version, generation_ms=float(msg.generation_ms),
        request_id=msg.request_id, vectors=_vectors_from_pb(msg.vectors) if msg.HasField("vectors") else None,
    )


def _vectors_from_pb(msg: pb.ItemVectors) -> ItemVectors:
    """The rows as arrays; their fit to the device's model (version, dim, count, values) is ItemVectors.check's."""
    ids = np.asarray(msg.item_ids, dtype=np.int64)
    if msg.dim <= 0 or len(msg.values) != len(ids) * msg.dim:
        raise VectorError("vectors.values", f"<{len(msg.values)} bytes>",
                          f"must be {len(ids)} ids x dim {msg.dim} bytes")
    values = np.frombuffer(msg.values, dtype=np.int8).reshape(len(ids), msg.dim)
    return ItemVectors(msg.model_version, int(msg.dim), ids, values, np.asarray(msg.scales, dtype=np.float32))


def _spec_to_pb(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(
        name=spec.name, dtype=spec.dtype,
        shape=[d if isinstance(d, int) else -1 for d in spec.shape],
        dim_names=[d if isinstance(d, str) else "" for d in spec.shape],
    )


def _spec_to_dict(spec: pb.TensorSpec) -> dict:
    names = list(spec.dim_names) or [""] * len(spec.shape)
    if len(names) != len(spec.shape):
        raise ManifestError(f"tensor spec '{spec.name}': {len(spec.shape)} dims but {len(names)} dim names")
    shape = [name if size == -1 and name else int(size) for size, name in zip(spec.shape, names)]
    return {"name": spec.name, "dtype": spec.dtype, "shape": shape}


def manifest_to_pb(manifest: ModelManifest) -> pb.ModelManifest:
    return pb.ModelManifest(
        model_name=manifest.model_name, version=manifest.version, format=format_to_pb(manifest.format),
        file_name=manifest.file_name, sha256=manifest.sha256, size_bytes=manifest.size_bytes,
        inputs=[_spec_to_pb(s) for s in manifest.inputs], outputs=[_spec_to_pb(s) for s in manifest.outputs],
        history_length=manifest.history_length, num_items=manifest.num_items,
        vocab_hash=manifest.vocab_hash, created_at=manifest.created_at, metrics=manifest.metrics,
        golden=None if manifest.golden is None else pb.GoldenExample(
            history=manifest.golden.history, candidates=manifest.golden.candidates, scores=manifest.golden.scores,
            vectors=manifest.golden.vectors),
        untrained_items=manifest.untrained_items, kind=manifest.kind, vector_dim=manifest.vector_dim,
        vector_table_sha256=manifest.vector_table_sha256,
    )


def manifest_from_pb(msg: pb.ModelManifest) -> ModelManifest:
    """Same validation as a manifest.json read from disk (shared.manifest)."""
    if msg.format not in _FORMAT_FROM_PB:
        raise ManifestError(f"manifest from server: field 'format' = {msg.format} is not onnx or pte")
    data = {
        "model_name": msg.model_name, "version": msg.version, "format": _FORMAT_FROM_PB[msg.format].value,
        "file_name": msg.file_name, "sha256": msg.sha256, "size_bytes": msg.size_bytes,
        "inputs": [_spec_to_dict(s) for s in msg.inputs], "outputs": [_spec_to_dict(s) for s in msg.outputs],
        "history_length": msg.history_length, "num_items": msg.num_items, "vocab_hash": msg.vocab_hash,
        "created_at": msg.created_at, "metrics": dict(msg.metrics),
        "golden": {"history": list(msg.golden.history), "candidates": list(msg.golden.candidates),
                   "scores": list(msg.golden.scores), "vectors": list(msg.golden.vectors)}
        if msg.HasField("golden") else None,
        "untrained_items": list(msg.untrained_items), "kind": msg.kind or "scorer", "vector_dim": msg.vector_dim,
        "vector_table_sha256": msg.vector_table_sha256,
    }
    return manifest_from_dict(data, source="manifest from server")
