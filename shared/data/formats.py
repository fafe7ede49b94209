"""Readers for the dataset formats users have on disk.

Each reader returns (events, items): `events` is a generator of (raw_user, raw_item, timestamp)
that streams the file line by line (large files are never loaded whole); `items` maps raw item
ids to RawItem metadata. Malformed input raises DataFormatError naming file, line and field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from shared.data.dataset import RawItem
from shared.errors import DataFormatError

Events = Iterator[tuple[str, str, int]]
Reader = Callable[[Path], tuple[Events, dict[str, RawItem]]]


def parse_int(path: Path, line: int, field: str, text: str) -> int:
    """An integer field (floats like '881250949.0' accepted when whole)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(path, line, field, f"{text!r} is not a number") from None
    if not value.is_integer():
        raise DataFormatError(path, line, field, f"{text!r} is not a whole number")
    return int(value)


def parse_year(text: str) -> int | None:
    """A 4-digit year found in the text, or None."""
    digits = "".join(c if c.isdigit() else " " for c in text).split()
    years = [int(d) for d in digits if len(d) == 4 and 1800 <= int(d) <= 2100]
    return years[-1] if years else None


# RecBole atomic files ---------------------------------------------------------------------------

def _atomic_header(path: Path, handle) -> dict[str, int]:
    header = handle.readline().rstrip("\r\n")
    if not header:
        raise DataFormatError(path, 1, "header", "empty file")
    return {col.split(":")[0]: n for n, col in enumerate(header.split("\t"))}


def _column(path: Path, columns: dict[str, int], *names: str, required: bool = True) -> int | None:
    for name in names:
        if name in columns:
            return columns[name]
    if required:
        raise DataFormatError(path, 1, names[0], f"missing column (header has {', '.join(columns)})")
    return None


def _atomic_events(path: Path) -> Events:
    with open(path, encoding="utf-8") as handle:
        columns = _atomic_header(path, handle)
        user_col = _column(path, columns, "user_id")
        item_col = _column(path, columns, "item_id")
        time_col = _column(path, columns, "timestamp")
        width = max(user_col, item_col, time_col) + 1
        for line_no, line in enumerate(handle, start=2):
            row = line.rstrip("\r\n").split("\t")
            if len(row) < width:
                raise DataFormatError(path, line_no, "-", f"expected at least {width} tab-separated fields, "
                                                          f"got {len(row)}")
            yield row[user_col], row[item_col], parse_int(path, line_no, "timestamp", row[time_col])


def _atomic_items(path: Path) -> dict[str, RawItem]:
    items: dict[str, RawItem] = {}
    with open(path, encoding="utf-8") as handle:
        columns = _atomic_header(path, handle)
        item_col = _column(path, columns, "item_id")
        title_col = _column(path, columns, "movie_title", "title", required=False)
        year_col = _column(path, columns, "release_year", "year", required=False)
        genre_col = _column(path, columns, "class", "genre", "categories", required=False)
        for line_no, line in enumerate(handle, start=2):
            row = line.rstrip("\r\n").split("\t")
            if len(row) <= item_col:
                raise DataFormatError(path, line_no, "item_id", "missing")

            def get(col: int | None) -> str:
                return row[col].strip() if col is not None and col < len(row) else ""

            items[row[item_col]] = RawItem(row[item_col], get(title_col), parse_year(get(year_col)),
                                           tuple(get(genre_col).split()))
    return items


def read_recbole(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """RecBole atomic files: a folder with NAME.inter (and optionally NAME.item), or the .inter file."""
    path = Path(path)
    inter = path if path.suffix == ".inter" else _single(path, "*.inter")
    item_file = inter.with_suffix(".item")
    items = _atomic_items(item_file) if item_file.is_file() else {}
    return _atomic_events(inter), items


def _single(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if len(found) != 1:
        raise DataFormatError(folder, 0, pattern, f"expected exactly one such file, found {len(found)}")
    return found[0]


READERS: dict[str, Reader] = {
    "recbole": read_recbole,
}
