"""MovieLens as GroupLens ships it: 100K (u.data + u.item) and 1M (ratings.dat + movies.dat), latin-1."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from shared.data.dataset import RawItem
from shared.data.lines import (clean_genres, nonempty, parse_int, parse_number, parse_year, read_lines, require_file,
                               short, split_fields, split_title_year)
from shared.data.readers import READERS, Events
from shared.errors import DataFormatError

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


def _ratings_and_items(path: Path, ratings: str, sep: str | None, movies: str,
                       read_items: Callable[[Path], dict[str, RawItem]]) -> tuple[Events, dict[str, RawItem]]:
    """A release's folder holding `ratings` (and optionally `movies`), or that ratings file itself: its events,
    and the items of the `movies` file beside it (none without one)."""
    path = Path(path)
    data = require_file(path if path.is_file() else path / ratings)
    item_file = data.parent / movies
    items = read_items(item_file) if item_file.is_file() else {}
    return _rating_events(data, sep), items


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


@READERS.register("movielens-100k-raw")
def read_movielens_100k(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """MovieLens-100K as GroupLens ships it: a folder with u.data (and optionally u.item), or u.data itself."""
    return _ratings_and_items(path, "u.data", None, "u.item", _ml100k_items)


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


@READERS.register("movielens-1m")
def read_movielens_1m(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """MovieLens-1M: a folder with ratings.dat (and optionally movies.dat), or ratings.dat itself."""
    return _ratings_and_items(path, "ratings.dat", "::", "movies.dat", _ml1m_items)
