"""The project's dataset format: dense ids, chronological sequences, written atomically."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from shared.errors import DataFormatError, EmptyDatasetError
from shared.files import staged_dir
from shared.records import Item

INTERACTIONS = "interactions.tsv"
ITEMS = "items.tsv"
USERS = "users.tsv"
META = "meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RawItem:
    """Item metadata as a reader found it (before ids are made dense)."""

    raw_id: str
    title: str = ""
    year: int | None = None
    genres: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """Interactions with dense ids: users 1..U, items 1..N (0 is padding), sorted by user then time.

    `interactions` is (M, 3) int64 with columns user, item, timestamp; ties in time keep file order.
    """

    interactions: np.ndarray
    items: tuple[Item, ...]
    users: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def vocab_hash(self) -> str:
        return vocab_hash(self.items)

    def user_bounds(self) -> np.ndarray:
        """(U + 1,) row offsets: user u's interactions are rows bounds[u - 1]:bounds[u]."""
        return np.searchsorted(self.interactions[:, 0], np.arange(1, self.num_users + 2))

    def sequences(self) -> list[np.ndarray]:
        """Per user (index u-1), the item ids in chronological order."""
        bounds = self.user_bounds()
        items = self.interactions[:, 1]
        return [items[bounds[u] : bounds[u + 1]] for u in range(self.num_users)]

    def stats(self) -> dict:
        return {"users": self.num_users, "items": self.num_items, "interactions": int(len(self.interactions))}


def drop_last(dataset: Dataset, count: int) -> Dataset:
    """The dataset without each user's last `count` interactions: the same users, items and vocabulary hash.

    This is the validation world of protocol B: models trained on it and replayed on its streams (the original's
    events [-2S, -S) when count = S) let settings be chosen without looking at the test streams.
    """
    users = dataset.interactions[:, 0]
    # Position of each row within its user's sequence, counted from the end (0 = the user's last interaction).
    from_end = dataset.user_bounds()[users] - np.arange(len(users)) - 1
    meta = {**dataset.meta, "dropped_last": int(dataset.meta.get("dropped_last", 0)) + count}
    return replace(dataset, interactions=dataset.interactions[from_end >= count], meta=meta)


def vocab_hash(items: Iterable[Item]) -> str:
    """Identity of a catalogue: a short sha256 of the raw ids in dense-id order."""
    digest = hashlib.sha256("\n".join(item.raw_id for item in items).encode())
    return digest.hexdigest()[:16]


def _raw_sort_key(raw: str):
    return (0, int(raw), "") if raw.isdigit() else (1, 0, raw)


def build_dataset(
    events: Iterable[tuple[str, str, int]],
    raw_items: Mapping[str, RawItem] | None = None,
    k_core: int = 0,
    meta: dict | None = None,
) -> Dataset:
    """Make ids dense and sort: users by raw id, items in catalogue order then first appearance.

    `events` yields (raw_user, raw_item, timestamp) in file order. Catalogue items without any
    interaction keep an id (cold-start items stay reachable) unless k-core filtering removes them.
    """
    users_raw, items_raw, times = [], [], []
    for user, item, ts in events:
        users_raw.append(user)
        items_raw.append(item)
        times.append(ts)
    if k_core > 1:
        keep = _k_core_mask(users_raw, items_raw, k_core)
        users_raw = [u for u, k in zip(users_raw, keep) if k]
        items_raw = [i for i, k in zip(items_raw, keep) if k]
        times = [t for t, k in zip(times, keep) if k]
    if not users_raw:
        raise EmptyDatasetError(f"no interactions left (k_core={k_core})")
    raw_items = dict(raw_items or {})
    item_order = list(raw_items) if k_core <= 1 else [i for i in raw_items if i in set(items_raw)]
    known = set(item_order)
    for item in items_raw:
        if item not in known:
            known.add(item)
            item_order.append(item)
    item_ids = {raw: n for n, raw in enumerate(item_order, start=1)}
    user_order = sorted(set(users_raw), key=_raw_sort_key)
    user_ids = {raw: n for n, raw in enumerate(user_order, start=1)}

    table = np.empty((len(users_raw), 3), dtype=np.int64)
    table[:, 0] = [user_ids[u] for u in users_raw]
    table[:, 1] = [item_ids[i] for i in items_raw]
    table[:, 2] = times
    table = table[np.lexsort((table[:, 2], table[:, 0]))]  # lexsort is stable: ties keep file order
    items = tuple(_make_item(item_ids[raw], raw_items.get(raw) or RawItem(raw)) for raw in item_order)
    meta = dict(meta or {})
    meta.update({"format_version": FORMAT_VERSION, "k_core": k_core})
    return Dataset(table, items, tuple(user_order), meta)


def _make_item(item_id: int, raw: RawItem) -> Item:
    return Item(id=item_id, raw_id=raw.raw_id, title=raw.title or f"item {raw.raw_id}", year=raw.year,
                genres=raw.genres)


def _k_core_mask(users: list[str], items: list[str], k: int) -> list[bool]:
    """Repeatedly drop users and items with fewer than k interactions."""
    keep = [True] * len(users)
    while True:
        user_count: dict[str, int] = {}
        item_count: dict[str, int] = {}
        for u, i, kept in zip(users, items, keep):
            if kept:
                user_count[u] = user_count.get(u, 0) + 1
                item_count[i] = item_count.get(i, 0) + 1
        changed = False
        for n, (u, i) in enumerate(zip(users, items)):
            if keep[n] and (user_count[u] < k or item_count[i] < k):
                keep[n] = False
                changed = True
        if not changed:
            return keep


def write_dataset(dataset: Dataset, out: str | Path) -> Path:
    """Write the dataset folder atomically: a temporary sibling folder, renamed at the end."""
    out = Path(out)
    with staged_dir(out, replace=True) as tmp:
        with open(tmp / INTERACTIONS, "w") as handle:
            handle.write("user\titem\ttimestamp\n")
            np.savetxt(handle, dataset.interactions, fmt="%d", delimiter="\t")
        with open(tmp / ITEMS, "w") as handle:
            handle.write("item\traw_id\ttitle\tyear\tgenres\ttext\n")
            for item in dataset.items:
                year = "" if item.year is None else str(item.year)
                row = [str(item.id), item.raw_id, item.title, year, "|".join(item.genres), item.text]
                handle.write("\t".join(_clean(v) for v in row) + "\n")
        with open(tmp / USERS, "w") as handle:
            handle.write("user\traw_id\n")
            for n, raw in enumerate(dataset.users, start=1):
                handle.write(f"{n}\t{_clean(raw)}\n")
        meta = dict(dataset.meta)
        meta.update(dataset.stats())
        meta["vocab_hash"] = dataset.vocab_hash
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _clean(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def load_dataset(folder: str | Path) -> Dataset:
    """Read a folder written by write_dataset, checking its shape."""
    folder = Path(folder)
    for name in (INTERACTIONS, ITEMS, USERS, META):
        if not (folder / name).is_file():
            raise DataFormatError(folder / name, 0, "-", "missing; run `lsc4rec data prepare` first")
    try:
        meta = json.loads((folder / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(folder / META, 0, "-", f"not valid JSON ({exc})") from None
    items = tuple(_read_items(folder / ITEMS))
    users = tuple(row[1] for row in _read_rows(folder / USERS, 2))
    table = np.loadtxt(folder / INTERACTIONS, dtype=np.int64, delimiter="\t", skiprows=1, ndmin=2)
    if table.shape[1] != 3:
        raise DataFormatError(folder / INTERACTIONS, 0, "-", f"expected 3 columns, got {table.shape[1]}")
    for column, name, limit in ((0, "user", len(users)), (1, "item", len(items))):
        bad = np.flatnonzero((table[:, column] < 1) | (table[:, column] > limit))
        if bad.size:
            raise DataFormatError(folder / INTERACTIONS, int(bad[0]) + 2, name,
                                  f"{table[bad[0], column]} outside 1..{limit}")
    return Dataset(table, items, users, meta)


def _read_rows(path: Path, columns: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        next(handle, None)
        for line_no, line in enumerate(handle, start=2):
            row = line.rstrip("\n").split("\t")
            if len(row) < columns:
                raise DataFormatError(path, line_no, "-", f"expected {columns} columns, got {len(row)}")
            rows.append(row)
    return rows


def _read_items(path: Path) -> Iterable[Item]:
    for n, row in enumerate(_read_rows(path, 6), start=1):
        if row[0] != str(n):
            raise DataFormatError(path, n + 1, "item", f"{row[0]!r}, expected {n} (ids must be dense)")
        year = int(row[3]) if row[3] else None
        yield Item(id=n, raw_id=row[1], title=row[2], year=year, genres=tuple(g for g in row[4].split("|") if g))
