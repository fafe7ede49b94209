"""The CandidateGenerator protocol (what the cloud serves) and a popularity stand-in."""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from shared.errors import ConfigError, InvalidArgumentError
from shared.records import Candidate
from shared.wire import check_items


class CandidateGenerator(Protocol):
    """Turns histories into ranked candidate lists; implemented by the cloud LLM and stand-ins."""

    @property
    def version(self) -> str: ...

    @property
    def num_items(self) -> int: ...

    def generate(self, histories: Sequence[Sequence[int]], n: int,
                 excludes: Sequence[Sequence[int]] | None = None) -> list[list[Candidate]]:
        """For each history, `n` distinct valid items not in the history or its exclude list, best first."""
        ...


def check_generate_args(histories: Sequence[Sequence[int]], n: int,
                        excludes: Sequence[Sequence[int]] | None, num_items: int) -> list[set[int]]:
    """Shared argument checks of `generate`; returns each row's blocked item set."""
    if num_items < 1:
        raise InvalidArgumentError("num_items", num_items, "the catalogue is empty")
    if excludes is not None and len(excludes) != len(histories):
        raise InvalidArgumentError("excludes", len(excludes), f"expected one list per history ({len(histories)})")
    blocked = []
    for row, history in enumerate(histories):
        items = set(check_items(f"histories[{row}]", history, num_items))
        if excludes is not None:
            items |= set(check_items(f"excludes[{row}]", excludes[row], num_items))
        if not 1 <= n <= num_items - len(items):
            raise InvalidArgumentError("n", n, f"must be in 1..{num_items - len(items)} for histories[{row}]")
        blocked.append(items)
    return blocked


class PopularityGenerator:
    """Most popular unseen items, scored by log frequency: the stand-in and the floor to beat."""

    def __init__(self, counts: np.ndarray, version: str = "popularity"):
        counts = np.asarray(counts, dtype=np.float64)  # (N + 1,), index 0 = padding
        self._num_items = len(counts) - 1
        self._version = version
        self._scores = np.log1p(counts[1:])
        # Stable order: most popular first, ties by id.
        self._order = np.argsort(-self._scores, kind="stable") + 1

    @classmethod
    def from_sequences(cls, sequences: Sequence[np.ndarray], num_items: int) -> "PopularityGenerator":
        counts = np.zeros(num_items + 1, dtype=np.int64)
        for seq in sequences:
            np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
        return cls(counts)

    @property
    def version(self) -> str:
        return self._version

    @property
    def num_items(self) -> int:
        return self._num_items

    def generate(self, histories, n, excludes=None):
        out = []
        for blocked in check_generate_args(histories, n, excludes, self._num_items):
            picked = [int(i) for i in self._order if int(i) not in blocked][:n] if blocked else self._order[:n]
            out.append([Candidate(int(i), float(self._scores[int(i) - 1])) for i in picked])
        return out


# Loaders for generator specs "SCHEME:ARG" (e.g. "llm:runs/llm"). Packages that may not import each
# other meet here: the composition root (simulator.cli) registers the cloud LLM loader, and offline
# device jobs (cooperative training) resolve a spec without importing `cloud` themselves.
_LOADERS: dict[str, Callable[[str, Any], CandidateGenerator]] = {}


def register_loader(scheme: str, loader: Callable[[str, Any], CandidateGenerator]) -> None:
    """`loader(arg, dataset)` builds the generator named by "scheme:arg"."""
    _LOADERS[scheme] = loader


def generator_from_spec(spec: str, dataset, train_sequences: Sequence[np.ndarray] | None = None) -> CandidateGenerator:
    """'popularity' (counts over `train_sequences`, default all) or 'SCHEME:ARG' through a registered loader."""
    if spec == "popularity":
        seqs = train_sequences if train_sequences is not None else dataset.sequences()
        return PopularityGenerator.from_sequences(seqs, dataset.num_items)
    scheme, sep, arg = spec.partition(":")
    if not sep or scheme not in _LOADERS:
        known = ", ".join(["popularity", *(f"{s}:ARG" for s in sorted(_LOADERS))])
        raise ConfigError("generator", spec, f"unknown generator (known: {known})")
    return _LOADERS[scheme](arg, dataset)
