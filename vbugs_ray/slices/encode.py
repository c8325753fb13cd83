"""Metadata columns -> small integer codes the lattice can count, the same way in memory and over
Parquet shards (one profile per shard, merged into one encoding per feature, then applied).

- categorical (strings, bools): one code per value; past ``max_values`` distinct values, the
  most frequent ``max_values - 1`` keep their own code and the rest become ``other``;
- numeric: one code per value when there are at most ``max_values`` of them, else quantile bins
  (``n_bins``, equal-height as in SliceFinder), labelled ``[low, high)``.
Missing values (None/NaN) get their own ``<missing>`` value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OTHER = "other"
MISSING = "<missing>"
SAMPLE_PER_SHARD = 20_000  # numeric values per shard that the quantile bins are cut from


def _dictionary_chunks(column: pa.ChunkedArray):
    """(distinct values as strings, per-row index into them with -1 for null) for each chunk."""
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        values = chunk.dictionary.cast(pa.string()).to_pylist()
        yield values, pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def is_numeric(type_: pa.DataType) -> bool:
    return pa.types.is_floating(type_) or pa.types.is_integer(type_)


def searchable(type_: pa.DataType) -> bool:
    """Whether a column has values a predicate can name: not a list, struct or map (a run
    store's ``top5``, an embedding) nor binary (its ``image_png``)."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    binary = pa.types.is_binary(type_) or pa.types.is_large_binary(type_) or pa.types.is_fixed_size_binary(type_)
    return not (pa.types.is_nested(type_) or binary)


def profile_table(table: pa.Table, features: Sequence[str], seed=0) -> dict:
    """Per feature: value -> count (categorical) or a random sample (numeric) of one table or shard."""
    out = {}
    rng = np.random.default_rng(seed)
    for name in features:
        column = table.column(name)
        if is_numeric(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            distinct = np.unique(values[np.isfinite(values)])
            take = min(len(values), SAMPLE_PER_SHARD)
            out[name] = ("numeric", rng.choice(values, take, replace=False) if take else values,
                         distinct if len(distinct) <= 1000 else None, bool((~np.isfinite(values)).any()))
        else:
            totals: dict[str, int] = {}
            for values, index in _dictionary_chunks(column):
                counts = np.bincount(index + 1, minlength=len(values) + 1)  # slot 0: nulls
                for value, count in zip([MISSING, *[MISSING if v is None else v for v in values]], counts.tolist()):
                    if count:
                        totals[value] = totals.get(value, 0) + count
            out[name] = ("categorical", totals, None, False)
    return out


class Encoding:
    """How one feature's raw values map to codes: a label list plus bin edges or a value table."""

    def __init__(self, labels: list[str], edges: np.ndarray | None = None, index: dict | None = None):
        self.labels, self.edges, self.index = labels, edges, index

    def encode(self, column: pa.ChunkedArray) -> np.ndarray:
        if self.edges is not None:
            x = column.to_numpy(zero_copy_only=False).astype(np.float64)
            codes = np.searchsorted(self.edges, x, side="right")
            if MISSING in self.labels:
                codes[~np.isfinite(x)] = self.labels.index(MISSING)
            return codes.astype(np.int16)
        other = self.labels.index(OTHER) if OTHER in self.labels else -1
        parts = []
        for values, index in _dictionary_chunks(column):
            # one code per distinct value, then one lookup per row; the last slot is for nulls
            lookup = [self.index.get(MISSING if v is None else v, other) for v in values]
            table = np.array([*lookup, self.index.get(MISSING, other)], np.int16)
            parts.append(table[index])
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def build_encodings(profiles: list[dict], features: Sequence[str], max_values: int, n_bins: int) -> list[Encoding]:
    encodings = []
    for name in features:
        kind = profiles[0][name][0]
        if kind == "numeric":
            distinct = [p[name][2] for p in profiles]
            if all(d is not None for d in distinct) and len(np.unique(np.concatenate(distinct))) <= max_values:
                values = np.unique(np.concatenate(distinct))  # few integer-like values: one code each
                edges = values[1:]
                labels = [f"{v:g}" for v in values]
            else:
                sample = np.concatenate([p[name][1] for p in profiles])
                sample = sample[np.isfinite(sample)]
                bounds = np.unique(np.quantile(sample, np.linspace(0, 1, n_bins + 1)))
                edges = bounds[1:-1]
                labels = [f"[{lo:.4g}, {hi:.4g}{']' if i == len(bounds) - 2 else ')'}"
                          for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
            if any(p[name][3] for p in profiles):
                labels.append(MISSING)
            encodings.append(Encoding(labels, edges=edges))
            continue
        totals: dict[str, int] = {}
        for p in profiles:
            for value, count in p[name][1].items():
                totals[value] = totals.get(value, 0) + count
        ranked = sorted(totals, key=lambda v: (-totals[v], v))
        if len(ranked) > max_values:
            kept = sorted(ranked[: max_values - 1])
            labels = kept + [OTHER]
        else:
            labels = sorted(ranked)
        encodings.append(Encoding(labels, index={v: i for i, v in enumerate(labels) if v != OTHER}))
    return encodings


def encode_column(values, max_values: int = 20, n_bins: int = 10) -> tuple[np.ndarray, list[str]]:
    """(codes, labels) of one in-memory column, by the same rules as the Parquet path."""
    array = pa.array(values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else values,
                     from_pandas=True)
    table = pa.table({"x": array})
    (encoding,) = build_encodings([profile_table(table, ["x"])], ["x"], max_values, n_bins)
    return encoding.encode(table.column("x")).astype(np.int64), list(encoding.labels)
