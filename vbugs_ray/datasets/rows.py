"""From a source's listing to audit rows and held-out rows.

- Labels: an integer label is an index into the spec's classes, a string one a class name; any
  other label (and a null one) keeps its row, marked ``unknown_label``.
- Metadata: each metadata column becomes an axis whose values are strings, cut the way the slice
  search cuts features (slices.encode: up to ``max_values`` values, else quantile bins); a row
  without a value is kept, marked ``missing_metadata``.
- Held out: a share of each class's items (chosen by a hash of their key and the spec's seed) is
  never audited; verification draws its images from there only, so a bug is confirmed on images
  other than those that flagged it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vbugs_ray.slices.encode import MISSING, encode_column, searchable

DATA_ERROR = "data_error"  # the column: why a row has no usable image or label ("" when it has)
UNKNOWN_LABEL = "unknown_label"
MISSING_METADATA = "missing_metadata"
NO_IMAGE = "no_image"  # a planned row for which the source holds no image (a class without items)


def class_of(raw: pa.ChunkedArray, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class name or the raw label as text, label index or -1, data_error) per item. An integer
    label (or a float holding one) indexes the spec's classes; a text label names one."""
    names = np.asarray(classes, dtype=object)
    if pa.types.is_floating(raw.type):
        values = raw.to_numpy(zero_copy_only=False)
        if np.all(np.isnan(values) | (values == np.round(values))):
            raw = pa.chunked_array([pa.array(np.where(np.isnan(values), None, values).tolist(), pa.int64())])
        else:
            raw = pc.cast(raw, pa.string())
    if pa.types.is_integer(raw.type):
        values = pc.fill_null(raw, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        known = (values >= 0) & (values < len(classes))
        shown = np.where(known, names[np.clip(values, 0, len(classes) - 1)], values.astype(str).astype(object))
        label = np.where(known, values, -1)
    else:
        text = np.asarray(pc.cast(raw, pa.string()).to_pylist(), dtype=object)
        index = {c: i for i, c in enumerate(classes)}
        label = np.array([index.get(t, -1) if t is not None else -1 for t in text], np.int64)
        shown = np.array(["<missing>" if t is None else t for t in text], dtype=object)
        known = label >= 0
    errors = np.array(["" if ok else f"{UNKNOWN_LABEL}: {str(s)[:60]!r} is not one of the spec's classes"
                       for ok, s in zip(known, shown)], dtype=object)
    return shown.astype(object), label, errors


def metadata_columns(listing: pa.Table, chosen: tuple[str, ...] | None) -> list[str]:
    """The listing's metadata columns to use as axes: ``chosen``, or every one a slice can name
    that holds a value (an all-empty column says nothing)."""
    found = [c for c in listing.column_names if c not in ("source", "raw_label")]
    if chosen is not None:
        return list(chosen)
    return [c for c in found if searchable(listing.schema.field(c).type)
            and not pa.types.is_null(listing.schema.field(c).type) and listing.column(c).null_count < listing.num_rows]


def axis_values(column: pa.ChunkedArray, max_values: int, n_bins: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(value per row as text, the axis's values in order, missing per row) of one metadata column
    (a blank string is missing too)."""
    column = column.combine_chunks()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ""), pa.scalar(None, column.type), column)
    codes, labels = encode_column(column, max_values, n_bins)
    text = np.asarray(labels, dtype=object)[codes]
    missing = text == MISSING
    # a value literally called "other" and the bucket of the rare values share one name, and one value
    return text, [v for v in dict.fromkeys(labels) if v != MISSING], missing


def held_out_mask(keys: list[str], labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """True for the items kept for verification: in each label, the ``share`` whose hash of
    (seed, key) is lowest (at least one when the label has two or more items and share > 0)."""
    score = np.array([int.from_bytes(hashlib.blake2b(f"{seed}|{k}".encode(), digest_size=8).digest(), "little")
                      for k in keys], dtype=np.uint64)
    mask = np.zeros(len(keys), bool)
    if share <= 0:
        return mask
    for label in np.unique(labels[labels >= 0]):  # items without a known class are all audited (and counted)
        mine = np.flatnonzero(labels == label)
        take = min(len(mine) - 1, max(1, int(round(share * len(mine))))) if len(mine) > 1 else 0
        mask[mine[np.argsort(score[mine], kind="stable")[:take]]] = True
    return mask


def draw_held_out(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct items of ``pool`` (never one twice: a repeated image is not a new test)."""
    return rng.permutation(pool)[: min(n, len(pool))]


def reason_code(error: str) -> str:
    """A data error's code, the part before its detail: the row's ``filter_reason``."""
    return error.split(":", 1)[0] if error else ""
