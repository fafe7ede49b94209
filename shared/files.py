"""Filesystem helpers: replace a folder so that readers never see a half-written one."""
from __future__ import annotations

import shutil
from pathlib import Path


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
