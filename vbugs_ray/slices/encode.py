"""Metadata columns -> small integer codes the lattice can count.

- categorical (strings, bools, small-integer columns): one code per value; past ``max_values``
  distinct values, the most frequent ``max_values - 1`` keep their own code and the rest become
  ``other``;
- numeric (floats, or integers with more than ``max_values`` distinct values): quantile bins
  (``n_bins``, equal-height as in SliceFinder), labelled ``[low, high)``.
Missing values (None/NaN) get their own ``<missing>`` value.
"""

from __future__ import annotations

import numpy as np

OTHER = "other"
MISSING = "<missing>"


def _is_numeric(values: np.ndarray, max_values: int) -> bool:
    if values.dtype.kind == "f":
        return True
    if values.dtype.kind in "iu":
        return len(np.unique(values)) > max_values
    return False


def _bin_numeric(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, list[str]]:
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    edges = np.unique(np.quantile(x[finite], np.linspace(0, 1, n_bins + 1))) if finite.any() else np.array([0.0])
    inner = edges[1:-1]
    codes = np.searchsorted(inner, x, side="right").astype(np.int64)
    labels = [f"[{lo:.4g}, {hi:.4g}{']' if i == len(edges) - 2 else ')'}" for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    if len(labels) == 0:
        labels = [f"{edges[0]:.4g}"]
    if not finite.all():
        codes[~finite] = len(labels)
        labels.append(MISSING)
    return codes, labels


def _encode_categorical(values: np.ndarray, max_values: int) -> tuple[np.ndarray, list[str]]:
    as_text = np.array([MISSING if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                        for v in values], dtype=object) if values.dtype == object else values.astype(str)
    uniques, codes, counts = np.unique(as_text, return_inverse=True, return_counts=True)
    if len(uniques) <= max_values:
        return codes.astype(np.int64), [str(u) for u in uniques]
    keep = np.argsort(-counts, kind="stable")[: max_values - 1]
    remap = np.full(len(uniques), max_values - 1, np.int64)
    remap[keep] = np.arange(len(keep))
    return remap[codes], [str(uniques[i]) for i in keep] + [OTHER]


def encode_column(values, max_values: int = 20, n_bins: int = 10) -> tuple[np.ndarray, list[str]]:
    """(codes, labels): codes index labels; see the module docstring for the rules."""
    values = np.asarray(values)
    if _is_numeric(values, max_values):
        return _bin_numeric(values, n_bins)
    return _encode_categorical(values, max_values)
