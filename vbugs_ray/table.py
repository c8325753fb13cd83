"""`vbugs slices --table`: the slice search on any Parquet table (bring your own predictions)."""

from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vbugs_ray.atomic import atomic_write_json, check_output
from vbugs_ray.errors import TableError
from vbugs_ray.raycluster import shard_runner
from vbugs_ray.report import build_report
from vbugs_ray.slices.parquet import parquet_counter, shard_pieces, spans_shards
from vbugs_ray.slices.search import run_search
from vbugs_ray.slices.settings import SearchSettings
from vbugs_ray.table_files import (check_features, check_loss_column, check_same_columns, read_schemas,
                                   split_searchable, table_files)


def _columns(path: str, error_col: str, loss_col: str | None, features: list[str] | None,
             progress: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """The table's files and the feature columns to search, or a one-line TableError. Without
    --features, list, struct and binary columns are left out (and named in a progress line)."""
    files = table_files(path, progress)
    schemas = read_schemas(files)
    names = schemas[0].names
    for flag, column in (("--error-col", error_col), ("--loss-col", loss_col)):
        if column is not None and column not in names:
            raise TableError(f"{flag} {column!r} is not a column of {path}; columns: {', '.join(names)}")
    check_loss_column(schemas[0], loss_col)
    if features is None:
        features, left_out = split_searchable(schemas[0], [n for n in names if n not in (error_col, loss_col)])
        if left_out:
            progress(f"columns left out of the search (lists, structs, binary: no values to slice on): "
                     f"{', '.join(left_out)}")
    missing = [f for f in features if f not in names]
    if missing:
        raise TableError(f"--features {missing[0]!r} is not a column of {path}; columns: {', '.join(names)}")
    for flag, column in (("--error-col", error_col), ("--loss-col", loss_col)):
        if column is not None and column in features:
            raise TableError(f"--features names the {flag} column {column!r}: a column cannot explain itself; "
                             "leave it out of --features")
    check_features(schemas[0], features)
    if not features:
        raise TableError(f"{path} has no feature columns besides the error (and loss) column")
    check_same_columns(files, schemas, [error_col, *([loss_col] if loss_col else []), *features])
    return files, features


SHOWN_VALUES = 5  # offending values an error message quotes


def _shown(values) -> str:
    """A few values for a one-line message, long ones cut."""
    quoted = [f"{v:.4g}" if isinstance(v, float) else repr(v) for v in sorted(values, key=str)]
    quoted = [q if len(q) <= 30 else q[:27] + "..." for q in quoted[:SHOWN_VALUES]]
    return ", ".join(quoted) + (", ..." if len(values) > SHOWN_VALUES else "")


def _error_kind(type_: pa.DataType) -> str:
    """How the error column is read: 'flag' (bool or integer), 'float', 'text' or 'other'."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_boolean(type_) or pa.types.is_integer(type_):
        return "flag"
    if pa.types.is_floating(type_):
        return "float"
    return "text" if pa.types.is_string(type_) or pa.types.is_large_string(type_) else "other"


def _scan_error_column(files: list[str], error_col: str) -> tuple[set, int]:
    """The distinct known values of the error column and its rows without one (null or NaN),
    reading that column alone, batch by batch. Stops early past ``SHOWN_VALUES`` distinct values:
    more than two is already wrong, and the message quotes no more."""
    values: set = set()
    missing = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(columns=[error_col]):
            column = batch.column(0)
            absent = pc.is_null(column, nan_is_null=True)
            missing += int(pc.sum(absent).as_py() or 0)
            distinct = pc.unique(column.filter(pc.invert(absent)))
            values.update(distinct.slice(0, SHOWN_VALUES + 1).to_pylist())
            if len(values) > SHOWN_VALUES:
                return values, missing
    return values, missing


def _check_flags(values: set, error_col: str, kind: str) -> None:
    bad = {v for v in values if v not in (0, 1)}  # True == 1 and False == 0: booleans pass
    if not bad:
        return
    probabilities = kind == "float" and all(0 < v < 1 for v in bad)
    fix = "threshold probabilities into 0/1 first" if probabilities else "map it to 0/1 (1 = error) first"
    raise TableError(f"--error-col {error_col!r} must hold 0/1 or true/false, found {_shown(bad)}: {fix}")


def _check_text(values: set, error_col: str, positive: str | None) -> None:
    if len(values) > 2:
        raise TableError(f"--error-col {error_col!r} holds more than two text values ({_shown(values)}): "
                         "map it to 0/1 (1 = error) first")
    if positive is None:
        raise TableError(f"--error-col {error_col!r} holds text ({_shown(values)}): "
                         "pass --positive VALUE to say which value is an error")
    if positive not in values:
        raise TableError(f"--positive {positive!r} is not a value of --error-col {error_col!r} ({_shown(values)})")


def check_error_column(files: list[str], error_col: str, positive: str | None) -> int:
    """Refuse an error column that is not 0/1, true/false, or at most two text values with
    ``positive`` naming one (a one-line TableError, before any counting starts); returns the
    rows that have no error value, which the counts leave out."""
    type_ = pq.read_schema(files[0]).field(error_col).type
    kind = _error_kind(type_)
    if kind == "other":
        raise TableError(f"--error-col {error_col!r} has type {type_}: it must hold 0/1, true/false, "
                         "or text with --positive VALUE")
    if positive is not None and kind != "text":
        raise TableError(f"--positive applies to a text --error-col; {error_col!r} has type {type_}: drop --positive")
    values, missing = _scan_error_column(files, error_col)
    if not values:
        raise TableError(f"--error-col {error_col!r} has no value in any row")
    if kind == "text":
        _check_text(values, error_col, positive)
    else:
        _check_flags(values, error_col, kind)
    return missing


def search_table(path: str, error_col: str, loss_col: str | None, features: list[str] | None,
                 settings: SearchSettings, out: str | None, progress: Callable[[str], None] = lambda _: None,
                 positive: str | None = None) -> dict:
    """Search a Parquet file or folder; counts spread over Ray tasks past one shard of rows.
    Rows without an error value are left out of every count (``rows_missing_error``)."""
    if out:
        check_output(out)
    notes: list[str] = []  # skipped files and columns, said once every check has passed
    files, features = _columns(path, error_col, loss_col, features, notes.append)
    rows_missing_error = check_error_column(files, error_col, positive)
    for note in notes:
        progress(note)
    if rows_missing_error:
        progress(f"{rows_missing_error} rows have no --error-col {error_col!r} value: left out of every count")
    pieces = shard_pieces(files)
    t0 = time.time()
    with shard_runner(spans_shards(pieces), progress=progress) as runner:
        counter = parquet_counter(pieces, error_col, features, loss_col, settings.max_values, settings.n_bins, runner,
                                  positive=positive)
        result = run_search(counter, settings)
    report = build_report(result, settings, features, table=str(path), files=len(files),
                          rows_missing_error=rows_missing_error, wall_s=round(time.time() - t0, 2))
    if out:
        atomic_write_json(out, report)
        progress(f"{len(result.flagged)} flagged slices -> {out}")
    return report
