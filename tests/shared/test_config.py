"""Strict configs: TOML presets, dotted overrides, unknown keys and bad values refused by name."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from shared.config import check, load_config, to_dict
from shared.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    size: int = 32
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    lr: float = 1e-3
    budgets: tuple[float, ...] = (0.05, 0.1)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        check(self.lr > 0, "lr", self.lr, "must be positive")


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("lr = 0.01\n[inner]\nsize = 8\n")
    config = load_config(Outer, path, ["inner.kind=b", "budgets=[0.2]"])
    assert config == Outer(lr=0.01, budgets=(0.2,), inner=Inner(size=8, kind="b"))
    assert to_dict(config)["inner"] == {"size": 8, "kind": "b"}


@pytest.mark.parametrize("override, key", [
    ("nope=1", "nope"), ("inner.size=x", "inner.size"), ("inner.kind=c", "inner.kind"),
    ("lr=-1", "lr"), ("inner.size=true", "inner.size"), ("lr", "lr"),
])
def test_refusals_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(Outer, overrides=[override])
    assert key in str(info.value)


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.toml").write_text("lr = = 1")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(Outer, tmp_path / "bad.toml")
