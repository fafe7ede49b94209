"""One registry per extension point: request policies, consistency measures, fusion norms, SRM architectures,
cloud generators, dataset readers.

A registry owns a package (e.g. `device.runtime.policies`) whose modules each register one or more entries:

    POLICIES = Registry("policy", "device.runtime.policies")

    @POLICIES.register("every")
    class EveryN: ...

The first lookup imports every module of that package, so adding an extension is one new file there. Code
outside the package (a test, a plugin) registers the same way before the lookup. The name an entry is
registered under is its one spelling: CLI flags, TOML presets, the simulator and the report all use it.
"""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, TypeVar

from shared.errors import InvalidArgumentError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind; `get` refuses an unknown name with the known ones listed."""

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind  # what the entries are, as a user would name the field (e.g. "policy")
        self.package = package  # the package whose modules register the built-in entries
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register `entry` under `name` (or use as a decorator); a second entry under one name is refused."""
        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def get(self, name: str, field: str | None = None) -> T:
        """The entry called `name`; an unknown one is an InvalidArgumentError naming `field` and the known names."""
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise InvalidArgumentError(field or self.kind, name,
                                       f"unknown {self.kind} (known: {', '.join(self.names())})") from None

    def names(self) -> tuple[str, ...]:
        self._discover()
        return tuple(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        self._discover()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """Register `entry` for the duration of a `with` block (tests)."""
        self.register(name, entry)
        try:
            yield entry
        finally:
            self._entries.pop(name, None)

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
