"""`vbugs discover --table`: failure groups, failure directions and the diagnosis ensemble on any
Parquet table of embeddings and errors (bring your own evaluation set), JSON out.

The same functions the audit's discovery runs (vbugs_ray.discover), without a generator or a
text encoder: the vocabulary ranking needs the embedder's text side, so it stays with audits.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as pads

from vbugs_ray.atomic import atomic_write_json, check_output
from vbugs_ray.discover import failure_directions, failure_groups
from vbugs_ray.discover.diagnosis import fit_finite, fit_per_class
from vbugs_ray.errors import TableError
from vbugs_ray.table_files import (check_features, check_loss_column, check_same_columns, kind, read_schemas,
                                   table_files)


def _embeddings(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """A list (or fixed-size list) column of floats as a (rows, dim) float32 matrix."""
    values = column.combine_chunks()
    if not (pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)):
        raise TableError(f"--embedding-col {name!r} must hold a list of floats per row; it holds {values.type}")
    if values.null_count:
        bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise TableError(f"--embedding-col {name!r}: row {bad} has no embedding")
    if pa.types.is_fixed_size_list(values.type):
        lengths = {values.type.list_size}
    else:
        lengths = set(pa.compute.list_value_length(values).to_numpy(zero_copy_only=False).tolist())
    if len(lengths) != 1:
        raise TableError(f"--embedding-col {name!r}: every row needs an embedding of one length; "
                         f"found lengths {sorted(lengths)[:5]}")
    dim = lengths.pop()
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    x = flat.reshape(len(values), dim)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise TableError(f"--embedding-col {name!r}: row {bad} holds NaN or infinite values")
    return x


def read_table(path: str, embedding_col: str, error_col: str, class_col: str | None, loss_col: str | None,
               pred_col: str | None, features: list[str] | None,
               progress: Callable[[str], None] = lambda _: None) -> dict:
    """The columns discovery needs, checked; a mistake is a one-line TableError naming the flag
    (or the file whose columns differ from the first file's)."""
    files = table_files(path, progress)
    schemas = read_schemas(files)
    names = schemas[0].names
    flags = {"--embedding-col": embedding_col, "--error-col": error_col, "--class-col": class_col,
             "--loss-col": loss_col, "--pred-col": pred_col}
    for flag, column in [*flags.items(), *(("--features", f) for f in features or [])]:
        if column is not None and column not in names:
            raise TableError(f"{flag} {column!r} is not a column of {path}; columns: {', '.join(names)}")
    error_type = schemas[0].field(error_col).type
    if kind(error_type) not in ("number", "bool"):
        raise TableError(f"--error-col {error_col!r} has type {error_type}: it must hold 0/1 or true/false; "
                         "map it to 0/1 (1 = error) first")
    check_loss_column(schemas[0], loss_col)
    check_features(schemas[0], features or [])
    wanted = list(dict.fromkeys(c for c in [*flags.values(), *(features or [])] if c is not None))
    check_same_columns(files, schemas, wanted)
    table = pads.dataset(files, format="parquet").to_table(columns=wanted)
    errors = table.column(error_col).to_numpy(zero_copy_only=False)
    if table.column(error_col).null_count or not np.isin(errors.astype(float), (0.0, 1.0)).all():
        raise TableError(f"--error-col {error_col!r} must be 0/1 or true/false in every row")
    n = table.num_rows
    out = {
        "embeddings": _embeddings(table.column(embedding_col), embedding_col),
        "errors": errors.astype(bool),
        "classes": (table.column(class_col).to_numpy(zero_copy_only=False).astype(str) if class_col
                    else np.full(n, "all")),
        "predictions": (table.column(pred_col).to_numpy(zero_copy_only=False).astype(str) if pred_col
                        else np.full(n, "?")),
        "features": {f: table.column(f).to_numpy(zero_copy_only=False).astype(str) for f in features or []},
        "files": len(files),
    }
    if loss_col:
        losses = table.column(loss_col).to_numpy(zero_copy_only=False).astype(np.float64)
        if np.isnan(losses).all():
            raise TableError(f"--loss-col {loss_col!r} has no numeric value")
        out["losses"] = losses
    return out


def discover_table(path: str, embedding_col: str = "embedding", error_col: str = "error",
                   class_col: str | None = "class", loss_col: str | None = None, pred_col: str | None = None,
                   features: list[str] | None = None, out: str | None = None, seed: int = 0,
                   with_rows: bool = False, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Discovery on a table: groups, directions and (with a loss column) the diagnosis ensembles.
    ``with_rows``: each group and direction also lists its rows (positions in the table)."""
    if out:
        check_output(out)
    t0 = time.time()
    notes: list[str] = []  # skipped files, said once every check has passed
    data = read_table(path, embedding_col, error_col, class_col, loss_col, pred_col, features, notes.append)
    for note in notes:
        progress(note)
    x, err, cls = data["embeddings"], data["errors"], data["classes"]
    progress(f"discovery over {len(err)} rows ({x.shape[1]}-d embeddings, {len(set(cls.tolist()))} classes, "
             f"error rate {err.mean():.3f})")
    seconds = {"read": time.time() - t0}
    t = time.time()
    groups = failure_groups(x, err, cls, data["predictions"], data["features"], seed=seed)
    seconds["failure_groups"] = time.time() - t
    t = time.time()
    directions = failure_directions(x, err, cls, seed=seed)
    seconds["failure_directions"] = time.time() - t
    diagnosis = None
    if "losses" in data:
        t = time.time()
        ensemble = fit_finite(x, data["losses"], seed)
        per_class = fit_per_class(x, data["losses"], cls, seed=seed)
        diagnosis = {**ensemble.summary(), "by_class": {c: m.summary() for c, m in per_class.items()}}
        seconds["diagnosis"] = time.time() - t
    report = {
        "table": str(path), "files": data["files"], "rows": int(len(err)), "dim": int(x.shape[1]),
        "error_rate": float(err.mean()),
        "groups": [{**g.to_dict(), **({"rows": g.rows.tolist()} if with_rows else {})} for g in groups],
        "directions": [{**d.to_dict(), **({"rows": d.rows.tolist()} if with_rows else {})} for d in directions],
        "diagnosis": diagnosis,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    progress(f"{len(groups)} failure groups, {len(directions)} failure directions"
             + (f", diagnosis held-out Spearman {diagnosis['spearman']:.2f}" if diagnosis else "")
             + f" ({time.time() - t0:.1f}s)")
    if out:
        atomic_write_json(out, report)
        progress(f"-> {out}")
    return report
