"""`vbugs slices --table`: the slice search on any Parquet table (bring your own predictions)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from vbugs_ray.report import build_report
from vbugs_ray.slices.search import SearchSettings, run_search


class TableError(ValueError):
    """A table that cannot be searched as asked (one-line message naming the column or path)."""


def _schema(path: str):
    from vbugs_ray.slices.distributed import parquet_files

    try:
        files = parquet_files(path)
    except FileNotFoundError as exc:
        raise TableError(str(exc)) from None
    return files, pq.read_schema(files[0])


def search_table(path: str, error_col: str, loss_col: str | None, features: list[str] | None,
                 search: dict, out: str | None) -> dict:
    files, schema = _schema(path)
    names = schema.names
    for flag, column in (("--error-col", error_col), ("--loss-col", loss_col)):
        if column is not None and column not in names:
            raise TableError(f"{flag} {column!r} is not a column of {path}; columns: {', '.join(names)}")
    features = features or [n for n in names if n not in (error_col, loss_col)]
    missing = [f for f in features if f not in names]
    if missing:
        raise TableError(f"--features {missing[0]!r} is not a column of {path}; columns: {', '.join(names)}")
    if not features:
        raise TableError(f"{path} has no feature columns besides the error (and loss) column")

    settings = SearchSettings.from_search(search)
    from vbugs_ray.slices.distributed import ShardCounter, needs_ray, shard_pieces

    use_ray = needs_ray(shard_pieces(files))
    if use_ray:  # importing Ray costs a second: only when the table spans several shards
        import ray
    started = use_ray and not ray.is_initialized()
    if started:
        ray.init(num_cpus=max(os.cpu_count() or 1, 2), include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.time()
        counter = ShardCounter(path, error_col, features, loss_col, settings.max_values, settings.n_bins,
                               use_ray=use_ray)
        result = run_search(counter, settings)
    finally:
        if started:
            ray.shutdown()
    report = build_report(result, search, features, table=str(path), files=len(files),
                          wall_s=round(time.time() - t0, 2))
    if out:
        tmp = Path(out).with_name(f".{Path(out).name}.tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out)
        print(f"[vbugs] {len(result.flagged)} flagged slices -> {out}", file=sys.stderr)
    return report
