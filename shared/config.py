"""Frozen-dataclass configs: defaults in code, TOML presets, dotted CLI overrides, strict checking."""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ConfigError

T = TypeVar("T")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                section: str | None = None) -> T:
    """Build `cls` from its defaults, then a TOML file (optionally one table of it), then `key=value` overrides."""
    values = read_toml(path) if path is not None else {}
    if section:
        values = values.get(section, {})
    return from_dict(cls, apply_overrides(values, overrides or []))


def resolve_preset(folder: Path, preset: str | Path, key: str = "preset") -> Path:
    """A preset name (FOLDER/NAME.toml, shipped as package data) or a path to a TOML file; a missing one is a
    ConfigError naming `key`, the value, and the presets that do exist."""
    path = Path(preset)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(key, str(preset), "no such file")
        return path
    named = folder / f"{preset}.toml"
    if not named.is_file():
        known = sorted(p.stem for p in folder.glob("*.toml"))
        raise ConfigError(key, str(preset), f"unknown preset (known: {', '.join(known)})")
    return named


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict; an unreadable file is a ConfigError naming it."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), "-", f"cannot read TOML: {exc}") from None


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` overrides (TOML values; a bare word is a string) to `values` in place."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(text, None, "an override must look like key=value")
        _set_dotted(values, key.strip(), _parse_value(raw.strip()))
    return values


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word is a string


def _set_dotted(values: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(key, value, f"'{part}' is not a table")
    node[parts[-1]] = value


def from_dict(cls: type[T], values: dict, prefix: str = "") -> T:
    """Strict construction: unknown keys and wrongly typed values raise ConfigError naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(full, value, f"unknown key for {cls.__name__} (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(full, value, typing.get_type_hints(cls)[key])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(prefix.rstrip(".") or cls.__name__, values, str(exc)) from None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"expected a table for {hint.__name__}")
        return from_dict(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(key, value, f"must be one of {', '.join(map(str, typing.get_args(hint)))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "expected a list")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(f"{key}[{n}]", v, inner) for n, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(key, value, f"expected {getattr(hint, '__name__', hint)}")
    return value


def check(condition: bool, key: str, value: Any, reason: str) -> None:
    """For `__post_init__` checks: raise ConfigError(key, value, reason) unless condition holds."""
    if not condition:
        raise ConfigError(key, value, reason)


def to_dict(config: Any) -> dict:
    """JSON-ready dict of a (nested) config dataclass, to save beside every artifact."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
