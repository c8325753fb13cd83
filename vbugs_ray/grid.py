"""Spec -> prompt-grid rows: one row per image to generate, deterministic in the spec.

A *cell* is one (class, axis values...) combination, numbered in row-major order over
``classes x axes`` as the spec lists them. Each row holds its cell, its replicate index within
the cell and a seed hashed from (spec seed, cell, replicate), so the same spec gives the same rows
and seeds, and a row's seed does not depend on how many other rows there are.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vbugs_ray.spec import AuditSpec

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash (SplitMix64's finaliser), vectorised."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def row_seeds(spec_seed: int, cells: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Per-row generation seeds in [0, 2**31): a hash of (spec seed, cell, replicate)."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(cells.shape, spec_seed, np.uint64))
        h = _splitmix64(h ^ cells.astype(np.uint64))
        h = _splitmix64(h ^ replicates.astype(np.uint64))
    return (h >> np.uint64(33)).astype(np.int64)


def n_cells(spec: AuditSpec) -> int:
    return len(spec.classes) * int(np.prod([len(a.values) for a in spec.axes]))


def _cell_counts(spec: AuditSpec) -> np.ndarray:
    """How many images each cell gets, by images_per_cell or by budget and the sampling rule."""
    total_cells = n_cells(spec)
    if spec.images_per_cell is not None:
        return np.full(total_cells, spec.images_per_cell, np.int64)
    rng = np.random.default_rng([spec.seed, 17])
    if spec.sampling == "balanced":  # equal shares; the remainder goes to a random set of cells
        counts = np.full(total_cells, spec.budget // total_cells, np.int64)
        counts[rng.permutation(total_cells)[: spec.budget % total_cells]] += 1
        return counts
    return np.bincount(rng.integers(0, total_cells, spec.budget), minlength=total_cells).astype(np.int64)


def n_rows(spec: AuditSpec) -> int:
    """How many rows ``build_grid`` makes, without making them."""
    return int(_cell_counts(spec).sum())


def build_grid(spec: AuditSpec) -> pa.Table:
    """All rows of the audit as an Arrow table, ordered by (cell, replicate), row_id = position."""
    counts = _cell_counts(spec)
    cells = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    replicates = np.arange(len(cells), dtype=np.int64) - np.repeat(starts, counts)

    sizes = [len(spec.classes)] + [len(a.values) for a in spec.axes]
    digits = np.unravel_index(cells, sizes) if len(cells) else [np.empty(0, np.int64)] * len(sizes)
    class_idx = np.asarray(digits[0], np.int64)
    columns: dict[str, object] = {
        "row_id": np.arange(len(cells), dtype=np.int64),
        "cell": cells,
        "replicate": replicates,
        "class": np.asarray(spec.classes, dtype=object)[class_idx],
        "label": class_idx,
    }
    phrase_cols = {"class": np.asarray(spec.class_phrases, dtype=object)[class_idx]}
    for axis, idx in zip(spec.axes, digits[1:]):
        idx = np.asarray(idx, np.int64)
        columns[axis.name] = np.asarray(axis.values, dtype=object)[idx]
        phrase_cols[axis.name] = np.asarray(axis.phrases, dtype=object)[idx]

    # format each distinct cell once; rows of a cell share the prompt
    cell_prompts = {}
    for pos in np.unique(cells, return_index=True)[1]:
        cell_prompts[int(cells[pos])] = spec.prompt.format(**{k: v[pos] for k, v in phrase_cols.items()})
    columns["prompt"] = [cell_prompts[int(c)] for c in cells]
    columns["seed"] = row_seeds(spec.seed, cells, replicates)
    return pa.table({k: pa.array(v) for k, v in columns.items()})


def audit_rows(spec: AuditSpec) -> pa.Table:
    """The audit's rows: the prompt grid, or the rows a generator that reads a dataset plans
    from it (its ``grid`` classmethod: one row per image it will read)."""
    from vbugs_ray.roles import registry

    cls = registry.backend_class("generator", spec.generator.backend)
    if hasattr(cls, "grid"):
        return cls.grid(registry.options_of("generator", spec.generator), spec)
    return build_grid(spec)
