"""Readers for the dataset formats users have on disk (RecBole, MovieLens, Amazon Reviews, CSV).

Each reader returns (events, items): `events` is a generator of (raw_user, raw_item, timestamp)
that streams the file line by line (large files are never loaded whole; gzip is read streaming
too); `items` maps raw item ids to RawItem metadata. Timestamps are Unix seconds where the format
says what they are. Malformed input raises DataFormatError naming file, 1-based line and field.
"""
from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Callable, Iterator

from shared.data.amazon import read_amazon_2018, read_amazon_2023
from shared.data.dataset import RawItem
from shared.data.lines import (clean_genres, find_column, nonempty, parse_int, parse_number, parse_year,
                               read_lines, require_file, short, single_file, split_fields, split_title_year)
from shared.errors import DataFormatError

__all__ = ["READERS", "Events", "Reader", "parse_int", "parse_year", "split_title_year", "read_recbole",
           "read_movielens_100k", "read_movielens_1m", "read_amazon_2018", "read_amazon_2023", "read_csv"]

Events = Iterator[tuple[str, str, int]]
Reader = Callable[[Path], tuple[Events, dict[str, RawItem]]]


# RecBole atomic files ---------------------------------------------------------------------------

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


def read_recbole(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """RecBole atomic files: a folder with NAME.inter (and optionally NAME.item), or the .inter file."""
    path = Path(path)
    inter = require_file(path if path.suffix == ".inter" else single_file(path, "*.inter"))
    item_file = inter.with_suffix(".item")
    items = _atomic_items(item_file) if item_file.is_file() else {}
    return _atomic_events(inter), items


# MovieLens --------------------------------------------------------------------------------------

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
RATING_FIELDS = ("user", "item", "rating", "timestamp")
ML100K_FIELDS = ("item", "title", "release date", "video release date", "IMDb URL",
                 *(f"genre flag {n} ({name})" for n, name in enumerate(ML100K_GENRES)))


def _rating_events(path: Path, sep: str | None) -> Events:
    """MovieLens rating lines: user SEP item SEP rating SEP timestamp (every rating is an event)."""
    for line_no, text in read_lines(path, "latin-1"):
        if not text.strip():
            continue
        user, item, rating, ts = split_fields(path, line_no, text, sep, RATING_FIELDS)
        parse_number(path, line_no, "rating", rating)
        yield (nonempty(path, line_no, "user", user), nonempty(path, line_no, "item", item),
               parse_int(path, line_no, "timestamp", ts))


def _ml100k_items(path: Path) -> dict[str, RawItem]:
    """u.item: id|title (year)|release date|video release date|IMDb URL|19 genre flags (u.genre order)."""
    items: dict[str, RawItem] = {}
    for line_no, text in read_lines(path, "latin-1"):
        if not text.strip():
            continue
        row = text.split("|")
        if len(row) < len(ML100K_FIELDS):
            raise DataFormatError(path, line_no, ML100K_FIELDS[len(row)],
                                  f"missing: expected {len(ML100K_FIELDS)} '|'-separated fields, got {len(row)}")
        flags = row[-len(ML100K_GENRES):]
        genres = []
        for n, (flag, name) in enumerate(zip(flags, ML100K_GENRES)):
            if flag.strip() not in ("0", "1"):
                raise DataFormatError(path, line_no, ML100K_FIELDS[5 + n], f"{short(flag)} is not 0 or 1")
            if flag.strip() == "1":
                genres.append(name)
        raw = nonempty(path, line_no, "item", row[0])
        title, year = split_title_year("|".join(row[1:-len(ML100K_GENRES) - 3]))
        items.setdefault(raw, RawItem(raw, title, year or parse_year(row[-len(ML100K_GENRES) - 3]), tuple(genres)))
    return items


def read_movielens_100k(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """MovieLens-100K as GroupLens ships it: a folder with u.data (and optionally u.item), or u.data itself."""
    path = Path(path)
    data = require_file(path if path.is_file() else path / "u.data")
    item_file = data.parent / "u.item"
    items = _ml100k_items(item_file) if item_file.is_file() else {}
    return _rating_events(data, None), items


def _ml1m_items(path: Path) -> dict[str, RawItem]:
    """movies.dat: id::Title (Year)::Genre|Genre (latin-1)."""
    items: dict[str, RawItem] = {}
    for line_no, text in read_lines(path, "latin-1"):
        if not text.strip():
            continue
        head, sep, genres = text.rpartition("::")
        raw, sep2, title = head.partition("::")
        if not sep or not sep2:
            field = "title" if not sep else "genres"
            raise DataFormatError(path, line_no, field, "missing: expected id::title::genres")
        raw = nonempty(path, line_no, "item", raw)
        title, year = split_title_year(title)
        items.setdefault(raw, RawItem(raw, title, year, clean_genres(genres.split("|"))))
    return items


def read_movielens_1m(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """MovieLens-1M: a folder with ratings.dat (and optionally movies.dat), or ratings.dat itself."""
    path = Path(path)
    data = require_file(path if path.is_file() else path / "ratings.dat")
    item_file = data.parent / "movies.dat"
    items = _ml1m_items(item_file) if item_file.is_file() else {}
    return _rating_events(data, "::"), items


# Plain CSV --------------------------------------------------------------------------------------

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


READERS: dict[str, Reader] = {
    "recbole": read_recbole,
    "movielens-100k-raw": read_movielens_100k,
    "movielens-1m": read_movielens_1m,
    "amazon-2018": read_amazon_2018,
    "amazon-2023": read_amazon_2023,
    "csv": read_csv,
}
