"""Frozen records exchanged between the packages (the wire messages convert to and from these)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Item:
    """One catalogue entry; `id` is the project's dense id (1..N, 0 = padding)."""

    id: int
    raw_id: str
    title: str
    year: int | None = None
    genres: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The text used for item embeddings (semantic IDs)."""
        parts = [self.title]
        if self.year is not None:
            parts.append(f"({self.year})")
        if self.genres:
            parts.append("- " + ", ".join(self.genres))
        return " ".join(parts)


@dataclass(frozen=True)
class Candidate:
    """One candidate item with the cloud generator's score (higher is better)."""

    item: int
    score: float


@dataclass(frozen=True)
class CandidateRequest:
    """A device's request for a fresh candidate list."""

    user_id: str
    history: tuple[int, ...]  # oldest first
    num_candidates: int
    exclude: tuple[int, ...] = ()
    request_id: str = ""
    device_model_version: str = ""
    with_vectors: bool = False  # a catalogue-free device: send item vectors of device_model_version's table
    missing_vectors: tuple[int, ...] = ()  # history items whose vectors the device lacks


@dataclass(frozen=True)
class CandidateResponse:
    """The cloud's answer: `candidates` best first."""

    candidates: tuple[Candidate, ...]
    generator_version: str
    generation_ms: float
    request_id: str = ""
    vectors: object = None  # shared.vector_table.ItemVectors when the request asked for them


class ModelFormat(str, Enum):
    """On-device artifact formats."""

    ONNX = "onnx"
    PTE = "pte"


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model input or output; a str dimension is dynamic."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GoldenExample:
    """One example input and the scores the artifact must give for it (checked at load, catches re-signed files)."""

    history: tuple[int, ...]  # history_length ids, left-padded with 0
    candidates: tuple[int, ...]
    scores: tuple[float, ...]  # one per candidate
    # a "user-encoder" artifact's example carries its vectors: history (non-padding) items, then candidates, flat
    vectors: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelManifest:
    """What a device needs to verify an SRM artifact before loading it (manifest.json)."""

    model_name: str
    version: str
    format: ModelFormat
    file_name: str
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    history_length: int
    num_items: int
    vocab_hash: str
    created_at: str
    metrics: dict[str, float] = field(default_factory=dict)
    golden: GoldenExample | None = None
    # Items (sorted ids) no training sequence of the model held: its scores for them mean nothing, so the device
    # gives them a neutral score (the mean of the list's other candidates) and lets the LLM's score place them.
    untrained_items: tuple[int, ...] = ()
    # "scorer": ids -> scores, the item table inside the artifact; "user-encoder": catalogue-free, item vectors
    # (sent by the cloud from the table published with this version, vector_table_sha256) -> the user vector
    kind: str = "scorer"
    vector_dim: int = 0
    vector_table_sha256: str = ""
