"""`vbugs slices --table`: the slice search on any Parquet table (bring your own predictions)."""

from __future__ import annotations

import time
from typing import Callable

import pyarrow.parquet as pq

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.errors import TableError
from vbugs_ray.raycluster import shard_runner
from vbugs_ray.report import build_report
from vbugs_ray.slices.parquet import parquet_counter, parquet_files, shard_pieces, spans_shards
from vbugs_ray.slices.search import run_search
from vbugs_ray.slices.settings import SearchSettings


def _columns(path: str, error_col: str, loss_col: str | None, features: list[str] | None) -> tuple[list[str], list[str]]:
    """The table's files and the feature columns to search, or a one-line TableError."""
    try:
        files = parquet_files(path)
    except FileNotFoundError as exc:
        raise TableError(str(exc)) from None
    names = pq.read_schema(files[0]).names
    for flag, column in (("--error-col", error_col), ("--loss-col", loss_col)):
        if column is not None and column not in names:
            raise TableError(f"{flag} {column!r} is not a column of {path}; columns: {', '.join(names)}")
    features = features or [n for n in names if n not in (error_col, loss_col)]
    missing = [f for f in features if f not in names]
    if missing:
        raise TableError(f"--features {missing[0]!r} is not a column of {path}; columns: {', '.join(names)}")
    if not features:
        raise TableError(f"{path} has no feature columns besides the error (and loss) column")
    return files, features


def search_table(path: str, error_col: str, loss_col: str | None, features: list[str] | None,
                 settings: SearchSettings, out: str | None, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Search a Parquet file or folder; counts spread over Ray tasks past one shard of rows."""
    files, features = _columns(path, error_col, loss_col, features)
    pieces = shard_pieces(files)
    t0 = time.time()
    with shard_runner(spans_shards(pieces), progress=progress) as runner:
        counter = parquet_counter(pieces, error_col, features, loss_col, settings.max_values, settings.n_bins, runner)
        result = run_search(counter, settings)
    report = build_report(result, settings, features, table=str(path), files=len(files),
                          wall_s=round(time.time() - t0, 2))
    if out:
        atomic_write_json(out, report)
        progress(f"{len(result.flagged)} flagged slices -> {out}")
    return report
