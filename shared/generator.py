"""The CandidateGenerator protocol (what the cloud serves), a popularity stand-in, and the generator registry."""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from shared.errors import ConfigError, InvalidArgumentError
from shared.records import Candidate
from shared.registry import Registry
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


GeneratorLoader = Callable[..., CandidateGenerator]
"""`loader(arg, dataset, seen, threads)` builds the generator named by the spec "SCHEME:ARG" ("SCHEME" alone: arg "").

`seen`: the sequences the generator may learn from (None = every sequence of `dataset`); `threads`: compute
threads it may use (0 = its library's default)."""

# The cloud's generators, one module of cloud/generators/ each, by the scheme of their spec ("popularity",
# "llm:runs/llm"). The registry object lives here so that offline device jobs (cooperative training) resolve a
# spec without importing `cloud` themselves; the entries live in the cloud package and are found by name.
GENERATORS: Registry[GeneratorLoader] = Registry("generator", "cloud.generators")


def generator_from_spec(spec: str, dataset, seen: Sequence[np.ndarray] | None = None,
                        threads: int = 0) -> CandidateGenerator:
    """The generator of a spec "SCHEME[:ARG]" (e.g. 'popularity', 'llm:runs/llm') through GENERATORS; `seen` are
    the sequences it may learn from (default: all of `dataset`)."""
    scheme, _, arg = spec.partition(":")
    if scheme not in GENERATORS:
        raise ConfigError("generator", spec, f"unknown generator (known: {', '.join(GENERATORS.names())})")
    return GENERATORS.get(scheme)(arg, dataset, seen, threads)
