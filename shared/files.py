"""Filesystem helpers: files and folders appear whole and verified, or not at all.

- `write_atomic`: the one routine for a file that must appear whole (a temp file in the target folder, renamed into
  place; on failure nothing is left); it returns the file's sha256.
- `download_verified`: `write_atomic` for fetched bytes (a cloud download, a wheel, a member of one), which are put
  in place only if their sha256 is the expected one.
- `staged_dir`: a folder built under a temp name beside its final one and renamed there when complete.
- `replace_dir`: put a finished folder in place of an old one, so that readers never see a half-written one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from shared.errors import ChecksumError
from shared.manifest import sha256_file


def download_verified(dest: str | Path, sha256: str, write: Callable[[BinaryIO], object]) -> Path:
    """Put the bytes that `write(handle)` writes at `dest`, only if their sha256 is `sha256`.

    They go to a temp file in dest's folder, and only a match is renamed to `dest` (atomic on one filesystem). When `write` raises, or the sha256 differs (ChecksumError naming dest, expected and actual),
    the temp file is deleted and `dest` is untouched.
    """
    write_atomic(dest, write, sha256)
    return Path(dest)


def write_atomic(dest: str | Path, write: Callable[[BinaryIO], object], sha256: str | None = None) -> str:
    """Put the bytes that `write(handle)` writes at `dest` whole or not at all (a temp file in dest's folder, renamed
    when complete); returns their hex sha256. With `sha256`, only bytes that match it are put there (ChecksumError)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:  # a real file: a writer may seek (np.savez's zip does)
            write(handle)
        actual = sha256_file(tmp)
        if sha256 is not None and actual != sha256:
            raise ChecksumError(dest, sha256, actual)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return actual


@contextmanager
def staged_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """A hidden temp folder beside `final` to fill in the `with` block; renamed to `final` when the block ends.

    replace=False: `final` must not exist yet (a plain rename); True: an existing `final` is swapped out
    (`replace_dir`). When the block raises, the temp folder is deleted and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        replace_dir(tmp, final)
        return
    try:
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, out: Path) -> None:
    """Put the finished folder `new` at `out`; an old `out` is deleted only once the new one is in place."""
    backup = None
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{new.name}")
        out.rename(backup)
    try:
        new.rename(out)
    except BaseException:
        if backup is not None:
            backup.rename(out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
