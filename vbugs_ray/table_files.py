"""A table given by path (``--table``), checked before any search starts: which files are read,
that each is a Parquet file, and that they agree on every column used. Each mistake is one
TableError line naming the file and the column, never a failure inside a Ray task."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from vbugs_ray.errors import TableError
from vbugs_ray.slices.encode import searchable
from vbugs_ray.slices.parquet import data_files

SHOWN_NAMES = 5  # skipped files or columns a progress line names


def _names(items: Sequence[str]) -> str:
    return ", ".join(items[:SHOWN_NAMES]) + (f", ... ({len(items)} in all)" if len(items) > SHOWN_NAMES else "")


def table_files(path: str, progress: Callable[[str], None]) -> list[str]:
    """The table's Parquet files (``data_files`` says which); a folder's other files are named
    in one progress line and skipped."""
    try:
        files, others = data_files(path)
    except FileNotFoundError as exc:
        raise TableError(f"--table: {exc}") from None
    if others:
        progress(f"skipped {len(others)} file{'s' if len(others) > 1 else ''} of {path} that "
                 f"{'are' if len(others) > 1 else 'is'} not *.parquet: {_names(others)}")
    return files


def _unreadable(file: str, exc: Exception) -> TableError:
    """Why ``file`` cannot be read as Parquet, and what to do about it."""
    if os.path.getsize(file) == 0:
        return TableError(f"{file} is empty (0 bytes): write it again, or remove it from the table")
    if not file.lower().endswith(".parquet"):
        return TableError(f"{file} is not a Parquet file: convert it first "
                          "(e.g. pandas.read_csv(...).to_parquet('table.parquet'))")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TableError(f"{file} cannot be read as Parquet ({reason}): it may be cut short; "
                      "write it again, or remove it from the table")


def read_schemas(files: Sequence[str]) -> list[pa.Schema]:
    """Each file's schema, from its footer alone: a file that is not Parquet (a CSV, an empty or
    truncated file) is named here rather than met by a counting task."""
    schemas = []
    for file in files:
        try:
            schemas.append(pq.read_schema(file))
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(file, exc) from None
    return schemas


def kind(type_: pa.DataType) -> str:
    """What a column's values are read as: 'number' (any width of integer or float), 'text',
    'bool', or the type itself. Files may differ in width, not in kind."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "text"
    return "bool" if pa.types.is_boolean(type_) else str(type_)


def check_same_columns(files: Sequence[str], schemas: Sequence[pa.Schema], columns: Sequence[str]) -> None:
    """Every file holds every column used, of the kind it has in the first file; else the first
    file and column that differ, named."""
    first = schemas[0]
    for file, schema in zip(files[1:], schemas[1:]):
        for column in columns:
            if column not in schema.names:
                raise TableError(f"{file} has no column {column!r} ({files[0]} has it): give every file the same "
                                 "columns, or leave this one out (--features)")
            expected, found = first.field(column).type, schema.field(column).type
            if kind(found) != kind(expected):
                raise TableError(f"column {column!r} is {found} in {file} but {expected} in {files[0]}: "
                                 "write every file with one type per column")


def split_searchable(schema: pa.Schema, columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(columns with values to slice on, list/struct/binary columns described with their type)."""
    kept = [c for c in columns if searchable(schema.field(c).type)]
    left = [f"{c} ({schema.field(c).type})" for c in columns if c not in kept]
    return kept, left


def check_features(schema: pa.Schema, features: Sequence[str]) -> None:
    """Refuse a named --features column whose values no predicate can name."""
    for column in features:
        if not searchable(schema.field(column).type):
            raise TableError(f"--features {column!r} has type {schema.field(column).type}: a list, struct or "
                             "binary column has no values to slice on; leave it out of --features")


def check_loss_column(schema: pa.Schema, loss_col: str | None) -> None:
    """The loss is averaged: refuse a column that is not numbers (text that looks like numbers included)."""
    if loss_col is not None and kind(schema.field(loss_col).type) != "number":
        raise TableError(f"--loss-col {loss_col!r} has type {schema.field(loss_col).type}: the loss must be "
                         "numeric (a float per row); cast it to float first")
