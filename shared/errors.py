"""Typed errors of the project; each names what was wrong (file, line, field, value)."""
from __future__ import annotations


class LSC4RecError(Exception):
    """Base class: every error the project raises on purpose derives from it."""


class DataFormatError(LSC4RecError):
    """A data file is malformed: names the file, the line (1-based, 0 = whole file) and the field."""

    def __init__(self, path: object, line: int, field: str, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: field '{field}': {message}")


class ChecksumError(LSC4RecError):
    """A file's sha256 is not the expected one."""

    def __init__(self, path: object, expected: str, actual: str):
        self.path, self.expected, self.actual = str(path), expected, actual
        super().__init__(f"{path}: sha256 {actual} does not match the expected {expected}")


class EmptyDatasetError(LSC4RecError):
    """Nothing is left (e.g. after k-core filtering)."""


class ConfigError(LSC4RecError):
    """A configuration key is unknown or its value is invalid."""

    def __init__(self, key: str, value: object, reason: str):
        self.key, self.value = key, value
        super().__init__(f"config key '{key}' = {value!r}: {reason}")


class InvalidArgumentError(LSC4RecError):
    """A request or call argument is invalid; names the field and the value."""

    def __init__(self, field: str, value: object, reason: str):
        self.field, self.value = field, value
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{field} = {shown}: {reason}")


class UnknownItemError(InvalidArgumentError):
    """An item id outside the catalogue 1..num_items."""


class CatalogMismatchError(LSC4RecError):
    """An artifact was made for another catalogue (vocab hash differs)."""

    def __init__(self, what: str, expected: str, actual: str):
        self.expected, self.actual = expected, actual
        super().__init__(f"{what}: vocab hash {actual} does not match the catalogue's {expected}")


class ManifestError(LSC4RecError):
    """A model manifest or artifact failed verification; the artifact must not be loaded."""


class UnavailableError(LSC4RecError):
    """A backend (model, cloud) is not ready or not reachable; the call may succeed later."""
