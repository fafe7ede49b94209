"""Dataset readers: each format on a small synthetic file (plain and gzip), bad input, k-core, fuzzing."""
from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.data.dataset import RawItem, build_dataset
from shared.data.lines import parse_int, split_title_year
from shared.data.readers import READERS
from shared.errors import DataFormatError, EmptyDatasetError

FLAGS = ["0"] * 19


def genre_flags(*indices: int) -> str:
    flags = list(FLAGS)
    for n in indices:
        flags[n] = "1"
    return "|".join(flags)


# Small valid inputs per format: {file name: bytes}; the reader is given the folder (or `target`).
SAMPLES: dict[str, dict[str, bytes]] = {
    "movielens-100k-raw": {
        "u.data": b"1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n",
        "u.item": (f"10|Toy Story (1995)|01-Jan-1995||http://x|{genre_flags(3, 4, 5)}\n"
                   f"20|Cit\xe9 des enfants perdus, La (1995)|01-Jan-1995||http://y|{genre_flags(9, 15)}\n"
                   f"30|unknown||||{genre_flags(0)}\n").encode("latin-1"),
    },
    "movielens-1m": {
        "ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
        "movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Am\xe9lie (2001)::Comedy|Romance\n"
                      .encode("latin-1"),
    },
    "recbole": {
        "toy.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t7\t4\t100\n2\t7\t5\t90\n"
                     b"1\t8\t3\t101\n",
        "toy.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    b"7\tHeat\t1995\tAction Crime\n8\tFargo\t1996\tCrime\n",
    },
    "amazon-2018": {
        "Toys_5.json": b'{"overall": 5.0, "reviewerID": "A1", "asin": "B01", "unixReviewTime": 1441065600}\n'
                       b'{"overall": 4.0, "reviewerID": "A1", "asin": "B02", "unixReviewTime": 1441065700}\n'
                       b'{"overall": 3.0, "reviewerID": "A2", "asin": "B01", "unixReviewTime": 1441065500}\n',
        "meta_Toys.json": b'{"asin": "B01", "title": "Red Car", "category": ["Toys &amp; Games", "Cars"]}\n'
                          b"{'asin': 'B02', 'title': 'Blue Ball', 'category': [], 'main_cat': 'Toys & Games'}\n"
                          b'{"asin": "B99", "title": "Never Reviewed", "category": ["Toys & Games"]}\n',
    },
    "amazon-2023": {
        "Toys.jsonl": b'{"rating": 5.0, "title": "great", "user_id": "U1", "asin": "X1", "parent_asin": "P1", '
                      b'"timestamp": 1588687728923}\n'
                      b'{"rating": 4.0, "user_id": "U1", "asin": "X2", "timestamp": 1588687729923}\n'
                      b'{"rating": 2.0, "user_id": "U2", "parent_asin": "P1", "timestamp": 1588600000000}\n',
        "meta_Toys.jsonl": b'{"parent_asin": "P1", "title": "Kite", "main_category": "Toys", '
                           b'"categories": ["Toys & Games", "Outdoor | Sports"]}\n'
                           b'{"parent_asin": "X2", "title": "Yo-yo", "categories": []}\n',
    },
    "csv": {
        "data.csv": b'\xef\xbb\xbfuser_id,item_id,rating,timestamp,title\n'
                    b'u1,i1,5,100,"Heat, The (1995)"\nu1,i2,4,101,Fargo\r\nu2,i1,3,99,"Heat, The (1995)"\n',
    },
}
TARGET = {"csv": "data.csv"}  # readers given a file rather than the folder
EXPECTED_EVENTS = {
    "movielens-100k-raw": [("1", "10", 881250949), ("1", "20", 881250950), ("2", "10", 881250000)],
    "movielens-1m": [("1", "1193", 978300760), ("1", "661", 978302109), ("2", "1193", 978298413)],
    "recbole": [("1", "7", 100), ("2", "7", 90), ("1", "8", 101)],
    "amazon-2018": [("A1", "B01", 1441065600), ("A1", "B02", 1441065700), ("A2", "B01", 1441065500)],
    "amazon-2023": [("U1", "P1", 1588687728), ("U1", "X2", 1588687729), ("U2", "P1", 1588600000)],
    "csv": [("u1", "i1", 100), ("u1", "i2", 101), ("u2", "i1", 99)],
}
EXPECTED_ITEMS = {
    "movielens-100k-raw": {
        "10": RawItem("10", "Toy Story", 1995, ("Animation", "Children's", "Comedy")),
        "20": RawItem("20", "Cité des enfants perdus, La", 1995, ("Fantasy", "Sci-Fi")),
        "30": RawItem("30", "unknown", None, ("unknown",)),
    },
    "movielens-1m": {
        "1193": RawItem("1193", "One Flew Over the Cuckoo's Nest", 1975, ("Drama",)),
        "661": RawItem("661", "Amélie", 2001, ("Comedy", "Romance")),
    },
    "recbole": {"7": RawItem("7", "Heat", 1995, ("Action", "Crime")), "8": RawItem("8", "Fargo", 1996, ("Crime",))},
    "amazon-2018": {"B01": RawItem("B01", "Red Car", None, ("Toys & Games", "Cars")),
                    "B02": RawItem("B02", "Blue Ball", None, ("Toys & Games",))},
    "amazon-2023": {"P1": RawItem("P1", "Kite", None, ("Toys & Games", "Outdoor / Sports")),
                    "X2": RawItem("X2", "Yo-yo", None, ())},
    "csv": {"i1": RawItem("i1", "Heat, The", 1995), "i2": RawItem("i2", "Fargo", None)},
}


def write_sample(folder: Path, fmt: str, files: dict[str, bytes] | None = None, gz: bool = False) -> Path:
    """Write a sample's files (optionally gzip-compressed, same names) and return what the reader is given."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or SAMPLES[fmt]).items():
        (folder / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return folder / TARGET[fmt] if fmt in TARGET else folder


def read(path: Path, fmt: str):
    events, items = READERS.get(fmt)(path)
    return list(events), items


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_reader_reads_sample(tmp_path, fmt, gz):
    events, items = read(write_sample(tmp_path, fmt, gz=gz), fmt)
    assert events == EXPECTED_EVENTS[fmt]
    assert items == EXPECTED_ITEMS[fmt]


def test_all_formats_registered():
    assert set(READERS.names()) == set(SAMPLES)


def test_amazon_accepts_the_reviews_file_and_gz_names(tmp_path):
    files = {"Toys_5.json.gz": gzip.compress(SAMPLES["amazon-2018"]["Toys_5.json"]),
             "meta_Toys.json.gz": gzip.compress(SAMPLES["amazon-2018"]["meta_Toys.json"]),
             "meta_Other.json": b"not even json\n"}  # another category's meta is not read
    write_sample(tmp_path, "amazon-2018", files)
    for target in (tmp_path, tmp_path / "Toys_5.json.gz"):
        events, items = read(target, "amazon-2018")
        assert events == EXPECTED_EVENTS["amazon-2018"]
        assert items == EXPECTED_ITEMS["amazon-2018"]


def test_amazon_without_meta_and_csv_without_title(tmp_path):
    write_sample(tmp_path / "a", "amazon-2023", {"Toys.jsonl": SAMPLES["amazon-2023"]["Toys.jsonl"]})
    assert read(tmp_path / "a", "amazon-2023") == (EXPECTED_EVENTS["amazon-2023"], {})
    target = write_sample(tmp_path / "c", "csv", {"data.csv": b"user\titem\ttimestamp\nu1\ti1\t5\n"})
    assert read(target, "csv") == ([("u1", "i1", 5)], {})
    ml_latest = b"userId;movieId;rating;timestamp\n1;31;2.5;1260759144\n"  # ';' and MovieLens-latest names
    target = write_sample(tmp_path / "d", "csv", {"data.csv": ml_latest})
    assert read(target, "csv") == ([("1", "31", 1260759144)], {})


def test_readers_stream_lazily(tmp_path):
    """The events are a generator: a bad line late in the file surfaces while iterating, after good events."""
    data = SAMPLES["movielens-1m"]["ratings.dat"] + b"3::1::5::oops\n"
    events, _ = READERS.get("movielens-1m")(write_sample(tmp_path, "movielens-1m", {"ratings.dat": data}))
    assert next(events) == ("1", "1193", 978300760)
    with pytest.raises(DataFormatError):
        list(events)


def test_title_year_and_int_parsing():
    assert split_title_year("Toy Story (1995) ") == ("Toy Story", 1995)
    assert split_title_year("Blade Runner 2049") == ("Blade Runner 2049", None)
    assert parse_int(Path("f"), 1, "t", "881250949.0") == 881250949
    with pytest.raises(DataFormatError, match="not a whole number"):
        parse_int(Path("f"), 1, "t", "1.5")
    with pytest.raises(DataFormatError, match="int64"):
        parse_int(Path("f"), 1, "t", "9" * 30)


BAD_INPUTS = [
    # (format, file to replace, its content, expected line, expected field)
    ("movielens-100k-raw", "u.data", b"1\t10\t5\t881250949\n1\t20\t3\n", 2, "timestamp"),
    ("movielens-100k-raw", "u.data", b"1\t10\t5\tyesterday\n", 1, "timestamp"),
    ("movielens-100k-raw", "u.data", b"1\t10\tfive\t881250949\n", 1, "rating"),
    ("movielens-100k-raw", "u.data", b"1\t10\t5\t881250949\t7\n", 1, "-"),
    ("movielens-100k-raw", "u.item", f"10|Toy Story (1995)|01-Jan-1995||x|{genre_flags()[:-1]}2\n".encode(),
     1, "genre flag 18 (Western)"),
    ("movielens-100k-raw", "u.item", b"10|Toy Story (1995)|01-Jan-1995\n", 1, "video release date"),
    ("movielens-1m", "ratings.dat", b"1::1193::5::978300760\n\n2::1193\n", 3, "rating"),
    ("movielens-1m", "movies.dat", b"1193::No genres\n", 1, "genres"),
    ("recbole", "toy.inter", b"user_id:token\titem_id:token\n1\t7\n", 1, "timestamp"),
    ("recbole", "toy.inter", b"user_id:token\titem_id:token\ttimestamp:float\n1\t7\t100\n1\n", 3, "item_id"),
    ("amazon-2018", "Toys_5.json", b'{"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1}\n{"reviewerID": "A1"\n',
     2, "-"),
    ("amazon-2018", "Toys_5.json", b'{"reviewerID": "A1", "asin": "B01"}\n', 1, "unixReviewTime"),
    ("amazon-2018", "Toys_5.json", b'{"reviewerID": "A1", "asin": ["B01"], "unixReviewTime": 1}\n', 1, "asin"),
    ("amazon-2018", "Toys_5.json", b'[1, 2]\n', 1, "-"),
    ("amazon-2018", "meta_Toys.json", b'{"asin": "B01", "title": 7}\n', 1, "title"),
    ("amazon-2018", "meta_Toys.json", b'{"asin": "B01"}\n' + b"[" * 50000 + b"\n", 2, "-"),
    ("amazon-2023", "Toys.jsonl", b"ab\n", 1, "-"),
    ("amazon-2023", "Toys.jsonl", b"{'user_id': 'U1', 'asin': b'X1', 'timestamp': 1}\n", 1, "asin"),
    ("amazon-2023", "Toys.jsonl", b'{"user_id": "U1", "asin": "X1", "timestamp": "soon"}\n', 1, "timestamp"),
    ("amazon-2023", "Toys.jsonl", b'{"user_id": "U1", "timestamp": 1}\n', 1, "parent_asin"),
    ("amazon-2023", "Toys.jsonl", b'{"user_id": "U\xff1", "asin": "X1", "timestamp": 1}\n', 1, "-"),
    ("csv", "data.csv", b"user,item,rating\nu1,i1,5\n", 1, "timestamp"),
    ("csv", "data.csv", b"user,item,timestamp\nu1,i1,5\nu2,i2\n", 3, "timestamp"),
    ("csv", "data.csv", b"user,item,timestamp\nu1,i1,5\nu2,i2,1e400x\n", 3, "timestamp"),
    ("csv", "data.csv", b"user,item,timestamp\n,i1,5\n", 2, "user"),
    ("csv", "data.csv", b"", 1, "header"),
]


@pytest.mark.parametrize("fmt, name, content, line, field", BAD_INPUTS)
def test_bad_input_names_file_line_and_field(tmp_path, fmt, name, content, line, field):
    target = write_sample(tmp_path, fmt, {**SAMPLES[fmt], name: content})
    with pytest.raises(DataFormatError) as info:
        read(target, fmt)
    error = info.value
    assert (Path(error.path).name, error.line, error.field) == (name, line, field)
    assert str(error).startswith(f"{tmp_path / name}:{line}: field '{field}': ")


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_truncated_gzip_and_missing_files(tmp_path, fmt):
    files = {name: gzip.compress(data + b"\n" * 4000)[:-12] for name, data in SAMPLES[fmt].items()}
    with pytest.raises(DataFormatError, match="cannot read"):
        read(write_sample(tmp_path / "gz", fmt, files), fmt)
    with pytest.raises(DataFormatError) as info:
        read(tmp_path / "empty" / TARGET.get(fmt, ""), fmt)
    assert info.value.line == 0


def test_k_core_filters_reader_output(tmp_path):
    rows = ["user,item,timestamp"] + [f"u{u},i{i},{10 * u + i}" for u in range(1, 4) for i in range(1, 4)]
    rows += ["u9,i1,1", "u1,i9,2"]  # user u9 and item i9 have one interaction each
    target = write_sample(tmp_path, "csv", {"data.csv": "\n".join(rows).encode()})
    events, items = READERS.get("csv")(target)
    full = build_dataset(events, items)
    assert full.stats() == {"users": 4, "items": 4, "interactions": 11}
    kept = build_dataset(READERS.get("csv")(target)[0], items, k_core=2)
    assert kept.stats() == {"users": 3, "items": 3, "interactions": 9}
    assert {item.raw_id for item in kept.items} == {"i1", "i2", "i3"}
    with pytest.raises(EmptyDatasetError):
        build_dataset(READERS.get("csv")(target)[0], items, k_core=4)


# Fuzzing: random or mutated input raises DataFormatError or reads cleanly, never anything else -------------------

def mutate(data: bytes, draw) -> bytes:
    """Truncate, overwrite or insert random bytes in a valid file; sometimes gzip (and truncate) it."""
    for _ in range(draw(st.integers(0, 3))):
        cut = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        junk = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\t", b"|", b"::", b",", b'"', b"\n",
                                                                          b"{", b"'", b"9" * 25, b"\xff"]))
        data = data[:cut] if op == "truncate" else data[:cut] + junk + data[cut + (op == "overwrite") * len(junk):]
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    return data


@st.composite
def fuzzed_inputs(draw):
    fmt = draw(st.sampled_from(sorted(SAMPLES)))
    files = {}
    for name, data in SAMPLES[fmt].items():
        kind = draw(st.sampled_from(["valid", "mutated", "bytes", "text"]))
        if kind == "mutated":
            data = mutate(data, draw)
        elif kind == "bytes":
            data = draw(st.binary(max_size=200))
        elif kind == "text":
            data = draw(st.text(alphabet="ab1 9.:|,\t\n\"'{}[]\\-e\x00é", max_size=200)).encode()
        files[name] = data
    return fmt, files


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_inputs())
def test_readers_raise_only_data_format_errors(case):
    fmt, files = case
    with tempfile.TemporaryDirectory() as tmp:
        try:
            events, items = read(write_sample(Path(tmp), fmt, files), fmt)
        except DataFormatError as exc:
            assert exc.path and str(exc)
            return
    for user, item, ts in events:
        assert isinstance(user, str) and isinstance(item, str) and user and item
        assert isinstance(ts, int) and -(2**63) <= ts < 2**63
    assert all(isinstance(raw, RawItem) and raw.raw_id == key for key, raw in items.items())
    json.dumps([raw.title for raw in items.values()])
