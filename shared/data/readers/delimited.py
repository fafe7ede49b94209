"""Plain CSV/TSV with a header naming user, item, timestamp and optionally title (delimiter sniffed)."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Iterator

from shared.data.dataset import RawItem
from shared.data.lines import find_column, nonempty, parse_int, read_lines, require_file, split_title_year
from shared.data.readers import READERS, Events
from shared.errors import DataFormatError

CSV_ALIASES = {
    "user": ("user", "user_id", "userid"),
    "item": ("item", "item_id", "itemid", "movieid"),
    "timestamp": ("timestamp",),
    "title": ("title",),
}


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str, int, str | None]]:
    """(line, user, item, timestamp, title or None) per data row; the delimiter (tab, comma, ';') is sniffed
    from the header."""
    lines = (text for _, text in read_lines(path, keep_ends=True))
    first = next(lines, "")
    if not first.strip():
        raise DataFormatError(path, 1, "header", "empty file")
    delimiter = max(("\t", ",", ";"), key=first.count)
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    try:
        header = [name.strip().lower().split(":")[0] for name in next(reader)]
        columns = {name: n for n, name in reversed(list(enumerate(header)))}
        user, item, ts = (find_column(path, columns, *CSV_ALIASES[name]) for name in ("user", "item", "timestamp"))
        title = find_column(path, columns, *CSV_ALIASES["title"], required=False)
        for row in reader:
            if not row or row == [""] * len(row):
                continue
            if len(row) != len(header):
                field = header[len(row)] if len(row) < len(header) else "-"
                raise DataFormatError(path, reader.line_num, field, f"expected {len(header)} fields "
                                                                    f"({delimiter!r}-separated), got {len(row)}")
            yield (reader.line_num, nonempty(path, reader.line_num, header[user], row[user]),
                   nonempty(path, reader.line_num, header[item], row[item]),
                   parse_int(path, reader.line_num, header[ts], row[ts]), None if title is None else row[title])
    except csv.Error as exc:
        raise DataFormatError(path, reader.line_num, "-", f"bad CSV ({exc})") from None


def _csv_events(path: Path) -> Events:
    for _, user, item, ts, _ in _csv_rows(path):
        yield user, item, ts


@READERS.register("csv")
def read_csv(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """A CSV/TSV file with a header naming user (or user_id), item (or item_id), timestamp and optionally
    title; with a title column, a first streaming pass collects the catalogue."""
    path = require_file(Path(path))
    items: dict[str, RawItem] = {}
    rows = _csv_rows(path)
    try:
        first = next(rows, None)  # checks the header now, not at the first event
    finally:
        rows.close()
    if first is not None and first[4] is not None:
        for _, _, item, _, title in _csv_rows(path):
            if item not in items:
                name, year = split_title_year(title)
                items[item] = RawItem(item, name, year)
    return _csv_events(path), items
