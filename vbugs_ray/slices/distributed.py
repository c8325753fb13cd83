"""The slice search over Parquet shards with Ray tasks: no process holds the whole table.

A shard is a piece of about a million rows (whole row groups of one file), so one big file still
spreads over every core. Pass 1 (one task per shard): each feature's value counts (categorical)
or a sample (numeric); the driver merges them into one encoding per feature, the same for every
shard. Pass 2 (one task per shard): the shard's columns become small integer codes, kept in Ray's
object store. Then, level by level, one task per shard counts only the feature combinations that
still hold candidate slices (``ShardCounter.count``), and the driver adds the per-shard counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vbugs_ray.slices.encode import Encoding, build_encodings, is_numeric, profile_table
from vbugs_ray.slices.lattice import SliceCounts, count_children, merge_children, residual_counts



def parquet_files(path: str | Path) -> list[str]:
    """The Parquet files of a file or a directory (recursively; hidden and _ files skipped)."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"no Parquet file or directory at {path}")
    files = sorted(pads.dataset(str(path), format="parquet").files)
    if not files:
        raise FileNotFoundError(f"{path} holds no Parquet files")
    return files


RAY_MIN_ROWS = 1_000_000  # below this, starting Ray costs more than counting in-process


def needs_ray(pieces: list[tuple[str, list[int]]]) -> bool:
    """Spread the search over Ray tasks only when there is more than one shard's worth of rows."""
    rows = sum(pq.ParquetFile(f).metadata.row_group(g).num_rows for f, groups in pieces for g in groups)
    return len(pieces) > 1 and rows > RAY_MIN_ROWS


def shard_pieces(files: list[str], target_rows: int = 1_000_000) -> list[tuple[str, list[int]]]:
    """Split files into pieces of whole row groups of about ``target_rows`` rows: the unit of one
    task, so a single large file still spreads over every core."""
    pieces = []
    for file in files:
        meta = pq.ParquetFile(file).metadata
        group, rows = [], 0
        for g in range(meta.num_row_groups):
            group.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= target_rows:
                pieces.append((file, group))
                group, rows = [], 0
        if group or meta.num_row_groups == 0:
            pieces.append((file, group))
    return pieces


def _read(piece: tuple[str, list[int]], columns: list[str], valid_col: str | None = None) -> pa.Table:
    """Some columns of a piece; with ``valid_col``, only the rows where that column is true.
    Text columns come back dictionary-encoded (as Parquet stores them): a few distinct values and
    small integer indices, which is all the encoding needs."""
    file, groups = piece
    schema = pq.read_schema(file)
    text = [c for c in columns if not is_numeric(schema.field(c).type) and not pa.types.is_boolean(schema.field(c).type)]
    handle = pq.ParquetFile(file, read_dictionary=text)
    if valid_col is None:
        return handle.read_row_groups(groups, columns=columns)
    table = handle.read_row_groups(groups, columns=[*columns, valid_col])
    return table.filter(pc.fill_null(table.column(valid_col), False)).select(columns)


def _profile(piece: tuple[str, list[int]], features: Sequence[str], valid_col: str | None = None) -> dict:
    """Per feature: value -> count (categorical) or a random sample (numeric) of one shard."""
    return profile_table(_read(piece, list(features), valid_col), features, seed=[len(piece[0]), *piece[1]])


def _encode_shard(piece: tuple[str, list[int]], features: Sequence[str], encodings: list[Encoding], error_col: str,
                  loss_col: str | None, valid_col: str | None = None) -> dict:
    columns = [*features, error_col, *([loss_col] if loss_col else [])]
    table = _read(piece, columns, valid_col)
    error = table.column(error_col).to_numpy(zero_copy_only=False).astype(bool)
    return {
        "codes": np.stack([enc.encode(table.column(f)) for f, enc in zip(features, encodings)]),
        "error_rows": np.nonzero(error)[0].astype(np.int64),
        "loss": None if loss_col is None else table.column(loss_col).to_numpy(zero_copy_only=False).astype(np.float64),
    }


def count_shard(shard: dict, cards: Sequence[int], combos: list[tuple[int, ...]]) -> dict:
    """Counts of each requested combination on one encoded shard. Error counts come from a
    bincount over the error rows only (a few percent of the rows), not a weighted pass."""
    codes, error_rows, loss = shard["codes"], shard["error_rows"], shard["loss"]
    out = {}
    prefix, prefix_key = None, None
    for combo in sorted(combos):  # sorted: combos sharing all but their last feature come together
        if combo[:-1] != prefix:
            prefix = combo[:-1]
            prefix_key = np.zeros(codes.shape[1], np.int64)
            for f in prefix:
                prefix_key *= cards[f]
                prefix_key += codes[f]
        key = prefix_key * cards[combo[-1]]
        key += codes[combo[-1]]
        size = int(np.prod([cards[f] for f in combo]))
        n = np.bincount(key, minlength=size)
        k = np.bincount(key[error_rows], minlength=size)
        if loss is None:
            ls = lsq = np.zeros(size)
        else:
            ls = np.bincount(key, weights=loss, minlength=size)
            lsq = np.bincount(key, weights=loss * loss, minlength=size)
        out[combo] = SliceCounts(n, k, ls, lsq)
    return out


class _LocalRunner:
    """Runs shard functions in this process (one shard: Ray would only add start-up time)."""

    def submit(self, fn, *args):
        return fn(*args)

    def get(self, handles):
        return list(handles)

    def as_completed(self, handles):
        yield from handles


class _RayRunner:
    """Runs shard functions as Ray tasks; encoded shards stay in the object store."""

    def __init__(self, num_cpus: float):
        import ray

        self.ray, self.num_cpus, self.remotes = ray, num_cpus, {}

    def submit(self, fn, *args):
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(num_cpus=self.num_cpus)(fn)
        return self.remotes[fn].remote(*args)

    def get(self, handles):
        return self.ray.get(list(handles))

    def as_completed(self, handles):
        pending = list(handles)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])


class ShardCounter:
    """A lattice counter over Parquet shards: one Ray task per shard per level, or, for a table
    of about one shard's rows (``use_ray=None`` decides so), the same functions in-process.
    With ``valid_col``, rows where that boolean column is false are left out of every count
    (the CLIP filter's failed generations)."""

    def __init__(self, path: str | Path, error_col: str, features: Sequence[str], loss_col: str | None = None,
                 max_values: int = 20, n_bins: int = 10, num_cpus: float = 1.0, use_ray: bool | None = None,
                 valid_col: str | None = None):
        self.files = parquet_files(path)
        self.pieces = shard_pieces(self.files)
        self.names = list(features)
        if use_ray is None:
            use_ray = needs_ray(self.pieces)
        self.runner = _RayRunner(num_cpus) if use_ray else _LocalRunner()
        run = self.runner
        profiles = run.get([run.submit(_profile, p, self.names, valid_col) for p in self.pieces])
        self.encodings = build_encodings(profiles, self.names, max_values, n_bins)
        self.values = [e.labels for e in self.encodings]
        self.cards = [len(v) for v in self.values]
        self.shards = [run.submit(_encode_shard, p, self.names, self.encodings, error_col, loss_col, valid_col)
                       for p in self.pieces]
        self._totals = run.get([run.submit(_shard_totals, s) for s in self.shards])

    def totals(self) -> tuple[int, int, float, float]:
        t = np.sum(np.asarray(self._totals, np.float64), axis=0)
        return int(t[0]), int(t[1]), float(t[2]), float(t[3])

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]:
        merged: dict[tuple[int, ...], SliceCounts] = {}
        handles = [self.runner.submit(count_shard, shard, self.cards, combos) for shard in self.shards]
        for counts_by_combo in self.runner.as_completed(handles):  # merged as shards finish
            for combo, counts in counts_by_combo.items():
                merged[combo] = counts if combo not in merged else merged[combo] + counts
        return merged

    def count_children(self, parents):
        handles = [self.runner.submit(_shard_children, shard, self.cards, parents) for shard in self.shards]
        return merge_children(list(self.runner.as_completed(handles)))

    def count_residual(self, slice_, others):
        parts = self.runner.get([self.runner.submit(_shard_residual, shard, slice_, others) for shard in self.shards])
        return tuple(int(x) for x in np.sum(np.asarray(parts, np.int64), axis=0))


def _error_mask(shard: dict) -> np.ndarray:
    error = np.zeros(shard["codes"].shape[1], bool)
    error[shard["error_rows"]] = True
    return error


def _shard_children(shard: dict, cards, parents) -> dict:
    return count_children(shard["codes"], _error_mask(shard), shard["loss"], cards, parents)


def _shard_residual(shard: dict, slice_, others) -> tuple[int, int, int, int]:
    return residual_counts(shard["codes"], _error_mask(shard), slice_, others)


def _shard_totals(shard: dict) -> tuple[float, float, float, float]:
    loss = shard["loss"]
    n = shard["codes"].shape[1]
    if loss is None:
        return n, len(shard["error_rows"]), 0.0, 0.0
    return n, len(shard["error_rows"]), float(loss.sum()), float((loss * loss).sum())
