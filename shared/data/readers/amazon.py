"""Amazon Reviews readers: 2018 (5-core JSON lines + meta_*.json) and 2023 (JSONL + meta_*.jsonl), gzip-aware."""
from __future__ import annotations

import ast
import html
import json
from dataclasses import dataclass
from pathlib import Path

from shared.data.dataset import RawItem
from shared.data.lines import (INT64_MAX, INT64_MIN, clean_genres, nonempty, parse_int, read_lines, require_file,
                                short)
from shared.data.readers import READERS, Events
from shared.errors import DataFormatError

AMAZON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _json_record(path: Path, line_no: int, text: str) -> dict:
    """One JSON object per line; some 2018 meta files hold Python dict literals, accepted as a fallback."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
            raise DataFormatError(path, line_no, "-", f"not a JSON object ({short(str(exc), 80)})") from None
    if not isinstance(value, dict):
        raise DataFormatError(path, line_no, "-", f"expected a JSON object, got {type(value).__name__}")
    return value


def _record_id(path: Path, line_no: int, record: dict, keys: tuple[str, ...]) -> str:
    """The first present, non-empty of `keys` as a string id."""
    for key in keys:
        value = record.get(key)
        if type(value) is str and value and not value[0].isspace() and not value[-1].isspace():
            return value  # the common case, checked cheaply
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataFormatError(path, line_no, key, f"expected a string id, got {type(value).__name__}")
        return nonempty(path, line_no, key, str(value))
    raise DataFormatError(path, line_no, keys[0], "missing")


def _record_time(path: Path, line_no: int, record: dict, key: str) -> int:
    value = record.get(key)
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value  # the common case, checked cheaply
    if value is None:
        raise DataFormatError(path, line_no, key, "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataFormatError(path, line_no, key, f"expected a number, got {type(value).__name__}")
    return parse_int(path, line_no, key, str(value))


@dataclass(frozen=True)
class _AmazonSpec:
    """Field names of one Amazon Reviews release (ids are tried in order; time is divided to seconds)."""

    user: str
    items: tuple[str, ...]
    time: str
    time_divisor: int
    meta_items: tuple[str, ...]
    genres: tuple[str, ...]


AMAZON_2018 = _AmazonSpec("reviewerID", ("asin",), "unixReviewTime", 1, ("asin",), ("category", "main_cat"))
AMAZON_2023 = _AmazonSpec("user_id", ("parent_asin", "asin"), "timestamp", 1000, ("parent_asin", "asin"),
                          ("categories", "main_category"))


def _amazon_events(path: Path, spec: _AmazonSpec) -> Events:
    for line_no, text in read_lines(path):
        if not text.strip():
            continue
        record = _json_record(path, line_no, text)
        user = _record_id(path, line_no, record, (spec.user,))
        item = _record_id(path, line_no, record, spec.items)
        yield user, item, _record_time(path, line_no, record, spec.time) // spec.time_divisor


def _meta_genres(path: Path, line_no: int, record: dict, keys: tuple[str, ...]) -> tuple[str, ...]:
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            value = [value]
        if value is None or value == []:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataFormatError(path, line_no, key, "expected a list of strings")
        genres = clean_genres(html.unescape(v) for v in value if "<" not in v)  # some 2018 main_cat are HTML
        if genres:
            return genres
    return ()


def _amazon_items(path: Path, spec: _AmazonSpec, wanted: set[str]) -> dict[str, RawItem]:
    """Metadata for the reviewed items only (meta files list far more items than a 5-core file)."""
    items: dict[str, RawItem] = {}
    for line_no, text in read_lines(path):
        if not text.strip():
            continue
        record = _json_record(path, line_no, text)
        raw = _record_id(path, line_no, record, spec.meta_items)
        if raw not in wanted or raw in items:
            continue
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise DataFormatError(path, line_no, "title", f"expected a string, got {type(title).__name__}")
        title = " ".join(html.unescape(title).split())  # 2018 titles carry HTML entities (&amp;)
        items[raw] = RawItem(raw, title, None, _meta_genres(path, line_no, record, spec.genres))
    return items


def _amazon_files(path: Path) -> tuple[Path, list[Path]]:
    """The reviews file and its meta_* files (the one named after the category, else all in the folder)."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in sorted(path.iterdir())
                 if p.is_file() and p.name.endswith(AMAZON_SUFFIXES) and not p.name.startswith("meta_")]
        if len(found) != 1:
            raise DataFormatError(path, 0, "reviews", f"expected exactly one reviews file (*.json[l][.gz], not "
                                                      f"meta_*), found {len(found)}; give the file itself")
        path = found[0]
    require_file(path)
    metas = [p for p in sorted(path.parent.glob("meta_*")) if p.is_file() and p.name.endswith(AMAZON_SUFFIXES)]
    stem = path.name
    for suffix in sorted(AMAZON_SUFFIXES, key=len, reverse=True):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = stem.removesuffix("_5")
    named = [p for p in metas if any(p.name == f"meta_{stem}{suffix}" for suffix in AMAZON_SUFFIXES)]
    return path, named or metas


def _read_amazon(path: Path, spec: _AmazonSpec) -> tuple[Events, dict[str, RawItem]]:
    reviews, metas = _amazon_files(path)
    items: dict[str, RawItem] = {}
    if metas:
        wanted = {item for _, item, _ in _amazon_events(reviews, spec)}  # a first streaming pass
        for meta in metas:
            for raw, item in _amazon_items(meta, spec, wanted).items():
                items.setdefault(raw, item)
    return _amazon_events(reviews, spec), items


@READERS.register("amazon-2018")
def read_amazon_2018(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """Amazon Reviews 2018: a 5-core JSON-lines reviews file (reviewerID, asin, unixReviewTime), or its folder,
    with optional meta_*.json (asin, title, category/main_cat) beside it; .gz read streaming."""
    return _read_amazon(path, AMAZON_2018)


@READERS.register("amazon-2023")
def read_amazon_2023(path: Path) -> tuple[Events, dict[str, RawItem]]:
    """Amazon Reviews 2023: a JSONL reviews file (user_id, parent_asin or asin, timestamp in ms -> seconds), or
    its folder, with optional meta_*.jsonl (parent_asin, title, categories/main_category); .gz streaming."""
    return _read_amazon(path, AMAZON_2023)
