"""Line-level parsing shared by the dataset readers: streaming (gzip-aware) lines and typed fields.

Every problem becomes a DataFormatError naming the file, the 1-based line (0 = whole file) and the field.
"""
from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Iterator

from shared.errors import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def parse_int(path: Path, line: int, field: str, text: str) -> int:
    """An int64 field (floats like '881250949.0' accepted when whole)."""
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise DataFormatError(path, line, field, f"{short(text)} is not a number") from None
        if not number.is_integer():
            raise DataFormatError(path, line, field, f"{short(text)} is not a whole number")
        value = int(number)
    if not INT64_MIN <= value <= INT64_MAX:
        raise DataFormatError(path, line, field, f"{short(text)} is outside the int64 range")
    return value


def parse_year(text: str) -> int | None:
    """A 4-digit year found in the text, or None."""
    digits = "".join(c if c.isdigit() else " " for c in text).split()
    years = [int(d) for d in digits if len(d) == 4 and d.isascii() and 1800 <= int(d) <= 2100]
    return years[-1] if years else None


def split_title_year(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); a title without a trailing year is kept whole."""
    match = _TITLE_YEAR.match(title.strip())
    if match and match.group(2).isascii() and 1800 <= int(match.group(2)) <= 2100:
        return match.group(1).strip(), int(match.group(2))
    return title.strip(), None


def short(text: str, limit: int = 60) -> str:
    """repr(text), cut to `limit` characters for error messages."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def require_file(path: Path) -> Path:
    """The path, if it is a file; else DataFormatError (line 0)."""
    if not path.is_file():
        raise DataFormatError(path, 0, "-", "file not found")
    return path


def open_binary(path: Path):
    """The file as a binary stream; gzip (by its magic bytes) is decompressed on the fly."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(2)
        return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")
    except OSError as exc:
        raise DataFormatError(path, 0, "-", f"cannot open ({exc.strerror or exc})") from None


def read_lines(path: Path, encoding: str = "utf-8", keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded text), streaming; decoding and gzip errors become DataFormatError."""
    line_no = 0
    try:
        with open_binary(path) as handle:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, line_no, "-", f"not valid {encoding} (byte {exc.start} of "
                                                              f"the line)") from None
                if line_no == 1:
                    text = text.lstrip("\ufeff")
                yield line_no, text if keep_ends else text.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(path, line_no + 1, "-", f"cannot read ({exc or type(exc).__name__})") from None


def split_fields(path: Path, line_no: int, text: str, sep: str | None, names: tuple[str, ...]) -> list[str]:
    """Split a line into exactly len(names) fields; a short line names its first missing field."""
    row = text.split(sep, len(names) - 1) if sep else text.split()
    if len(row) < len(names):
        raise DataFormatError(path, line_no, names[len(row)],
                              f"missing: expected {len(names)} fields ({', '.join(names)}), got {len(row)}")
    if sep is None and len(row) > len(names) or sep and sep in row[-1]:
        raise DataFormatError(path, line_no, "-", f"expected {len(names)} fields ({', '.join(names)}), "
                                                  f"got more")
    return row


def nonempty(path: Path, line_no: int, field: str, text: str) -> str:
    """The stripped text; an empty field is an error."""
    text = text.strip()
    if not text:
        raise DataFormatError(path, line_no, field, "empty")
    return text


def parse_number(path: Path, line_no: int, field: str, text: str) -> float:
    """A numeric field (e.g. a rating, checked though not kept)."""
    try:
        return float(text)
    except ValueError:
        raise DataFormatError(path, line_no, field, f"{short(text)} is not a number") from None


def clean_genres(values) -> tuple[str, ...]:
    """Distinct, stripped genre names ('|' is the items.tsv separator, so it is replaced)."""
    out: list[str] = []
    for value in values:
        name = " ".join(str(value).replace("|", "/").split())
        if name and name not in out:
            out.append(name)
    return tuple(out)


def single_file(folder: Path, pattern: str) -> Path:
    """The one file in `folder` matching `pattern`."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if len(found) != 1:
        raise DataFormatError(folder, 0, pattern, f"expected exactly one such file, found {len(found)}")
    return found[0]


def find_column(path: Path, columns: dict[str, int], *names: str, required: bool = True) -> int | None:
    """The index of the first of `names` in a header; a missing required column names the file's line 1."""
    for name in names:
        if name in columns:
            return columns[name]
    if required:
        shown = ", ".join(columns)[:200]
        raise DataFormatError(path, 1, names[0], f"missing column (header has {shown})")
    return None
