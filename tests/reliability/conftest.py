"""Fixtures of the reliability suite: a good tiny ONNX artifact and a reranker loaded from it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.models import VOCAB_HASH, write_good


@pytest.fixture(scope="session")
def good_model(tmp_path_factory) -> Path:
    return write_good(tmp_path_factory.mktemp("reliability-model") / "v1")


@pytest.fixture(scope="session")
def reranker(good_model):
    from device.runtime.artifact import load_reranker

    return load_reranker(good_model, vocab_hash=VOCAB_HASH)
