"""Fixtures of the cloud tests that several modules share."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def grown_world(tmp_path_factory):
    """A trained tiny text-grounded run and a catalogue that extends its own (tests/cloud/grown_world.py)."""
    from simulator.cli import main
    from tests.cloud.grown_world import build

    root = tmp_path_factory.mktemp("grown")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSC4REC_CACHE", str(root / "cache"))
        return build(root, main)
