"""Catalogue identity and growth: does catalogue B extend catalogue A (A's items, same ids, same order, new ones after)?

A generator trained on catalogue A can serve catalogue B only if every id keeps naming the same item: item ids are
row numbers of its token table and of every device model's embedding. So B may only append. Models record A as a
`CatalogRef` (vocab hash and size, and where they kept them, the raw ids, which let a refusal name the first
offending item instead of only saying that a hash differs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shared.data.dataset import vocab_hash
from shared.errors import DataFormatError
from shared.records import Item

RAW_IDS_NAME = "catalogue.txt"  # one raw item id per line, line n = item n


@dataclass(frozen=True)
class CatalogRef:
    """A catalogue as a model remembers it: vocab hash, item count and, when kept, the raw ids in id order."""

    vocab_hash: str
    num_items: int
    raw_ids: tuple[str, ...] | None = None

    @classmethod
    def of(cls, items: Sequence[Item] | Sequence[str]) -> "CatalogRef":
        """The full reference of a list of Items (or of raw ids in id order)."""
        raw = _raw_ids(items)
        return cls(raw_vocab_hash(raw), len(raw), raw)

    def items(self) -> tuple[Item, ...]:
        """Title-less Items of the kept raw ids (what a vocab-hash check of an item index needs)."""
        if self.raw_ids is None:
            raise ValueError("this catalogue reference kept no raw ids")
        return tuple(Item(id=n, raw_id=raw, title="") for n, raw in enumerate(self.raw_ids, start=1))


def _raw_ids(items: Sequence[Item] | Sequence[str]) -> tuple[str, ...]:
    """The raw ids, in id order, of Items or of raw ids."""
    return tuple(i if isinstance(i, str) else i.raw_id for i in items)


def raw_vocab_hash(raw_ids: Sequence[str]) -> str:
    """`vocab_hash` of raw ids in id order (the same value as for the Items that carry them)."""
    return vocab_hash(Item(id=0, raw_id=raw, title="") for raw in raw_ids)


def check_extends(base: CatalogRef, grown: Sequence[Item] | Sequence[str], path: str | Path) -> int:
    """The number of items `grown` appends to `base`; DataFormatError naming `path` (the grown catalogue's file),
    the line of the first offending item and the field when `grown` is not `base` followed by new items.

    Refused: fewer items than `base` (ids would vanish), an existing id naming another raw item (reordered or
    replaced), and a new item whose raw id is already in the catalogue (one item, two ids). Line n + 1 is item n,
    as in a dataset's items.tsv (its line 1 is the header).
    """
    raw = _raw_ids(grown)
    if len(raw) < base.num_items:
        raise DataFormatError(path, 0, "item", f"{len(raw)} items, fewer than the {base.num_items} of the catalogue "
                                               f"it must extend (item {len(raw) + 1} is missing; ids may only be added)")
    if base.raw_ids is not None:
        for n, (old, new) in enumerate(zip(base.raw_ids, raw), start=1):
            if old != new:
                raise DataFormatError(path, n + 1, "raw_id", f"item {n} is {new!r} but was {old!r}: existing items must "
                                                             "keep their ids and order (new items go at the end)")
    elif raw_vocab_hash(raw[:base.num_items]) != base.vocab_hash:
        raise DataFormatError(path, 0, "raw_id", f"items 1..{base.num_items} have vocab hash "
                                                 f"{raw_vocab_hash(raw[:base.num_items])}, not the extended catalogue's "
                                                 f"{base.vocab_hash}: an existing item was changed or reordered")
    first = {r: n for n, r in reversed(list(enumerate(raw[:base.num_items], start=1)))}
    for n, new in enumerate(raw[base.num_items:], start=base.num_items + 1):
        if new in first:
            raise DataFormatError(path, n + 1, "raw_id", f"new item {n} is {new!r}, already item {first[new]}")
        first[new] = n
    return len(raw) - base.num_items


def write_raw_ids(folder: str | Path, items: Sequence[Item] | Sequence[str]) -> Path:
    """`folder/catalogue.txt`: the raw ids in id order, so a later catalogue can be checked item by item."""
    raw = _raw_ids(items)
    path = Path(folder) / RAW_IDS_NAME
    path.write_text("".join(f"{r}\n" for r in raw))
    return path


def read_raw_ids(folder: str | Path) -> tuple[str, ...] | None:
    """The raw ids kept in `folder/catalogue.txt`, None when the folder kept none."""
    path = Path(folder) / RAW_IDS_NAME
    if not path.is_file():
        return None
    return tuple(path.read_text(encoding="utf-8").splitlines())
