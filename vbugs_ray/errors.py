"""The user's mistakes, each a one-line message: the CLI prints it and exits with status 2.

These live apart from the modules that raise them so that the CLI can catch them without
importing torch, Ray or a backend, and so that every layer can raise them without importing
another layer.
"""

from __future__ import annotations

from typing import Any

QUOTE_CHARS = 60  # a value quoted in an error line is cut to this many characters
FIELD_CHARS = 60  # and a field path (a key can be any text) to this many
MESSAGE_CHARS = 220  # a whole message, as a last resort: values are quoted short before this


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error line: one line, cut to ``limit`` characters with "..."."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print (Python's 4300-digit limit)
        text = "<an integer too long to print>"
    return cut(one_line(text), limit)


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(ValueError):
    """A spec mistake; ``str()`` is one line naming the field. The field (a key may be any text)
    and the message are made one line and cut, so no spec can make the error line long."""

    def __init__(self, field_path: str, message: str):
        field_path, message = cut(one_line(str(field_path)), FIELD_CHARS), cut(one_line(message), MESSAGE_CHARS)
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
