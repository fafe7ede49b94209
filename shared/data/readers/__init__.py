"""Readers for the dataset formats users have on disk (RecBole, MovieLens, Amazon Reviews, CSV), one module each.

Each reader returns (events, items): `events` is a generator of (raw_user, raw_item, timestamp)
that streams the file line by line (large files are never loaded whole; gzip is read streaming
too); `items` maps raw item ids to RawItem metadata. Timestamps are Unix seconds where the format
says what they are. Malformed input raises DataFormatError naming file, 1-based line and field.

A module registers its readers under the name `lsc4rec data prepare --dataset NAME` uses, so a new format is one
new module here:

    @READERS.register("csv")
    def read_csv(path: Path) -> tuple[Events, dict[str, RawItem]]: ...
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from shared.data.dataset import RawItem
from shared.registry import Registry

Events = Iterator[tuple[str, str, int]]
Reader = Callable[[Path], tuple[Events, dict[str, RawItem]]]

READERS: Registry[Reader] = Registry("dataset format", "shared.data.readers")
