"""Parquet tables as encoded shards, so that no process holds the whole table.

A shard is about ``SHARD_ROWS`` rows of whole Parquet row groups, taken from one file or from
several small ones (a run store writes many files of a few thousand rows), so that the number
of counting tasks follows the table's size, not its file count. Pass 1 (one call per shard):
each feature's value counts (categorical) or a sample (numeric); the driver merges them into one
encoding per feature, the same for every shard. Pass 2 (one call per shard): the shard's columns
become small integer codes (an ``EncodedShard``), which stay wherever the runner keeps results
(in Ray's object store when the layer above passes a Ray runner).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vbugs_ray.slices.counts import EncodedShard, LocalRunner, Runner, ShardCounter
from vbugs_ray.slices.encode import Encoding, build_encodings, is_numeric, profile_table

SHARD_ROWS = 1_000_000
Piece = tuple[tuple[str, tuple[int, ...]], ...]  # ((file, row groups), ...): one shard's rows


BOOKKEEPING_PREFIXES = (".", "_")  # hidden files, _SUCCESS, .crc checksums, a run store's staging folders


def data_files(path: str | Path) -> tuple[list[str], list[str]]:
    """(data files, other files) of a table. A file given by name is the table. A folder's data
    files are its ``*.parquet`` files, subfolders included, in path order; names starting with
    ``.`` or ``_`` are bookkeeping (Spark's ``_SUCCESS``, checksums, a run store's staging
    folders) and left out unsaid; any other file is returned second, for the caller to name as
    skipped, so that a stray CSV or notes file neither breaks the read nor goes unnoticed."""
    path = Path(path)
    if path.is_file():
        return [str(path)], []
    if not path.is_dir():
        raise FileNotFoundError(f"no Parquet file or directory at {path}")
    files: list[str] = []
    others: list[str] = []
    for root, folders, names in os.walk(path):
        folders[:] = [f for f in folders if not f.startswith(BOOKKEEPING_PREFIXES)]
        for name in names:
            if not name.startswith(BOOKKEEPING_PREFIXES):
                (files if name.lower().endswith(".parquet") else others).append(os.path.join(root, name))
    if not files:
        held = ", ".join(sorted(Path(f).name for f in others)[:3]) + (", ..." if len(others) > 3 else "")
        raise FileNotFoundError(f"{path} holds no *.parquet files" + (f" (only {held})" if others else ""))
    return sorted(files), sorted(others)


def parquet_files(path: str | Path) -> list[str]:
    """The Parquet files of a file or a folder, by the rule of ``data_files``."""
    return data_files(path)[0]


def shard_pieces(files: Sequence[str], target_rows: int = SHARD_ROWS) -> list[Piece]:
    """Whole row groups, in file order, cut into shards of about ``target_rows`` rows: a large
    file spreads over several shards, many small files share one."""
    pieces: list[Piece] = []
    current: list[tuple[str, tuple[int, ...]]] = []
    groups: list[int] = []
    rows = 0
    for file in files:
        meta = pq.ParquetFile(file).metadata
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= target_rows:
                current.append((file, tuple(groups)))
                pieces.append(tuple(current))
                current, groups, rows = [], [], 0
        if groups:
            current.append((file, tuple(groups)))
            groups = []
    if current:
        pieces.append(tuple(current))
    return pieces


def piece_rows(pieces: Sequence[Piece]) -> int:
    return sum(pq.ParquetFile(f).metadata.row_group(g).num_rows for piece in pieces for f, gs in piece for g in gs)


def spans_shards(pieces: Sequence[Piece]) -> bool:
    """More than one shard's worth of rows: worth spreading over workers (starting Ray costs
    seconds, counting a shard in-process well under that)."""
    return len(pieces) > 1 and piece_rows(pieces) > SHARD_ROWS


def _read(piece: Piece, columns: list[str], valid_col: str | None = None, error_col: str | None = None) -> pa.Table:
    """Some columns of a shard, only the rows that count: with ``valid_col``, rows where that
    column is true; with ``error_col``, rows whose error is known (not null, not NaN).
    Text columns come back dictionary-encoded (as Parquet stores them): a few distinct values and
    small integer indices, which is all the encoding needs."""
    wanted = [*columns, *(c for c in (valid_col, error_col) if c and c not in columns)]
    parts = []
    for file, groups in piece:
        handle = pq.ParquetFile(file)
        schema = handle.schema_arrow
        text = [c for c in columns if not is_numeric(schema.field(c).type) and not pa.types.is_boolean(schema.field(c).type)]
        handle = pq.ParquetFile(file, read_dictionary=text)
        parts.append(handle.read_row_groups(list(groups), columns=wanted))
    # files may differ in width (int32 in one, int64 in another: the table checks allow it)
    table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
    keep = _rows_that_count(table, valid_col, error_col)
    return table.select(columns) if keep is None else table.filter(keep).select(columns)


def _rows_that_count(table: pa.Table, valid_col: str | None, error_col: str | None):
    """The mask of rows to keep, or None when every row counts (so the shard is not copied)."""
    keep = None
    if valid_col:
        keep = pc.fill_null(table.column(valid_col), False)
    if error_col:
        known = pc.invert(pc.is_null(table.column(error_col), nan_is_null=True))
        keep = known if keep is None else pc.and_(keep, known)
    return None if keep is None or pc.all(keep).as_py() in (True, None) else keep


def profile_piece(piece: Piece, index: int, features: Sequence[str], valid_col: str | None = None,
                  error_col: str | None = None) -> dict:
    """Per feature: value -> count (categorical) or a random sample (numeric) of one shard's
    counted rows (``error_col``: those whose error is known)."""
    return profile_table(_read(piece, list(features), valid_col, error_col), features, seed=[index, 7])


def encode_piece(piece: Piece, features: Sequence[str], encodings: list[Encoding], error_col: str,
                 loss_col: str | None, valid_col: str | None = None, positive: str | None = None) -> EncodedShard:
    """One shard as codes. Rows with no error value are left out; the error column is read as
    0/1 or true/false, or with ``positive``, as text where that value marks an error (the
    caller has checked the column holds one or the other)."""
    table = _read(piece, [*features, error_col, *([loss_col] if loss_col else [])], valid_col, error_col)
    error = table.column(error_col)
    error = pc.equal(error, positive) if positive is not None else error
    error = error.to_numpy(zero_copy_only=False).astype(bool)
    loss = None if loss_col is None else table.column(loss_col).to_numpy(zero_copy_only=False).astype(np.float64)
    codes = np.stack([enc.encode(table.column(f)) for f, enc in zip(features, encodings)])
    return EncodedShard(codes, np.nonzero(error)[0].astype(np.int64), loss)


def parquet_counter(pieces: Sequence[Piece], error_col: str, features: Sequence[str], loss_col: str | None = None,
                    max_values: int = 20, n_bins: int = 10, runner: Runner | None = None,
                    valid_col: str | None = None, positive: str | None = None) -> ShardCounter:
    """A counter over the shards of a Parquet table. With ``valid_col``, rows where that boolean
    column is false are left out of every count (the CLIP filter's failed generations); so are
    rows whose error is missing. ``positive``: the error column is text, this value an error."""
    run = runner or LocalRunner()
    names = list(features)
    profiles = run.get([run.submit(profile_piece, p, i, names, valid_col, error_col) for i, p in enumerate(pieces)])
    encodings = build_encodings(profiles, names, max_values, n_bins)
    shards = [run.submit(encode_piece, p, names, encodings, error_col, loss_col, valid_col, positive) for p in pieces]
    return ShardCounter(names, [e.labels for e in encodings], shards, run)
