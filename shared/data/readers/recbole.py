"""RecBole atomic files: NAME.inter (user_id, item_id, timestamp columns) and optionally NAME.item beside it."""
from __future__ import annotations

from pathlib import Path

from shared.data.dataset import RawItem
from shared.data.lines import (clean_genres, find_column, nonempty, parse_int, parse_year, read_lines, require_file,
                               single_file)
from shared.data.readers import READERS, Events
from shared.errors import DataFormatError


def _atomic_columns(path: Path, header: str | None) -> dict[str, int]:
    if not header or not header.strip():
        raise DataFormatError(path, 1, "header", "empty file")
    return {col.split(":")[0].strip(): n for n, col in enumerate(header.split("\t"))}


def _atomic_events(path: Path) -> Events:
    lines = read_lines(path)
    columns = _atomic_columns(path, next(lines, (1, None))[1])
    cols = [find_column(path, columns, name) for name in ("user_id", "item_id", "timestamp")]
    width = max(cols) + 1
    for line_no, text in lines:
        if not text.strip():
            continue
        row = text.split("\t")
        if len(row) < width:
            missing = next(name for name, col in zip(("user_id", "item_id", "timestamp"), cols) if col >= len(row))
            raise DataFormatError(path, line_no, missing, f"missing: expected at least {width} tab-separated "
                                                          f"fields, got {len(row)}")
        yield (nonempty(path, line_no, "user_id", row[cols[0]]), nonempty(path, line_no, "item_id", row[cols[1]]),
               parse_int(path, line_no, "timestamp", row[cols[2]]))


def _atomic_items(path: Path) -> dict[str, RawItem]:
    items: dict[str, RawItem] = {}
    lines = read_lines(path)
    columns = _atomic_columns(path, next(lines, (1, None))[1])
    item_col = find_column(path, columns, "item_id")
    title_col = find_column(path, columns, "movie_title", "title", required=False)
    year_col = find_column(path, columns, "release_year", "year", required=False)
    genre_col = find_column(path, columns, "class", "genre", "categories", required=False)
    for line_no, text in lines:
        if not text.strip():
            continue
        row = text.split("\t")
        if len(row) <= item_col:
            raise DataFormatError(path, line_no, "item_id", "missing")

        def get(col: int | None) -> str:
            return row[col].strip() if col is not None and col < len(row) else ""

        raw = nonempty(path, line_no, "item_id", row[item_col])
        genres = clean_genres(get(genre_col).split())
        items.setdefault(raw, RawItem(raw, get(title_col), parse_year(get(year_col)), genres))
    return items


@READERS.register("recbole")
def read_recbole(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """RecBole atomic files: a folder with NAME.inter (and optionally NAME.item), or the .inter file."""
    path = Path(path)
    inter = require_file(path if path.suffix == ".inter" else single_file(path, "*.inter"))
    item_file = inter.with_suffix(".item")
    items = _atomic_items(item_file) if item_file.is_file() else {}
    return _atomic_events(inter), items
