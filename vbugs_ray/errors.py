"""The user's mistakes, each a one-line message: the CLI prints it and exits with status 2.

These live apart from the modules that raise them so that the CLI can catch them without
importing torch, Ray or a backend, and so that every layer can raise them without importing
another layer.
"""

from __future__ import annotations


class SpecError(ValueError):
    """A spec mistake; ``str()`` is one line naming the field."""

    def __init__(self, field_path: str, message: str):
        self.field, self.message = field_path, message
        super().__init__(f"spec field '{field_path}': {message}")

    def __reduce__(self):  # picklable, so an error raised in a Ray actor reaches the driver intact
        return (SpecError, (self.field, self.message))


class RunStoreError(RuntimeError):
    """A run directory that cannot be used as asked (one-line message)."""


class TableError(ValueError):
    """A table that cannot be searched as asked (one-line message naming the column or path)."""


class TokenError(ValueError):
    """A learn-tokens input that cannot be used (one-line message naming the option)."""


class UsageError(ValueError):
    """A command-line flag given a value it cannot take (one-line message naming the flag)."""


class OutputError(ValueError):
    """An output path that cannot be written (one-line message naming the path), found before the
    work whose result it would hold starts."""


USER_ERRORS = (SpecError, RunStoreError, TableError, TokenError, UsageError, OutputError)
