"""Counting slices: the sufficient statistics (rows, errors, loss sums) of feature-value cells.

A table is one or more *shards*, each its rows as small integer codes (``EncodedShard``). Every
count is a function of one shard, whose results add up across shards, so the same search runs
over one in-memory table or over Parquet shards spread across a cluster: ``ShardCounter`` sends
each function to every shard through a *runner* (``LocalRunner`` here; the layer above passes in
one that runs them as Ray tasks) and adds the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

Key = tuple[tuple[int, int], ...]  # a slice: sorted (feature index, value code) predicates


@dataclass
class SliceCounts:
    """Sufficient statistics of every cell of one feature combination (dense, row-major)."""

    n: np.ndarray
    errors: np.ndarray
    loss_sum: np.ndarray
    loss_sq: np.ndarray

    def __add__(self, other: "SliceCounts") -> "SliceCounts":
        return SliceCounts(self.n + other.n, self.errors + other.errors,
                           self.loss_sum + other.loss_sum, self.loss_sq + other.loss_sq)

    def cell(self, flat: int) -> np.ndarray:
        """(n, errors, loss_sum, loss_sq) of one cell."""
        return np.array([self.n[flat], self.errors[flat], self.loss_sum[flat], self.loss_sq[flat]], np.float64)


@dataclass
class EncodedShard:
    """One shard's rows: ``codes`` (features x rows) of small integers, the indices of the rows
    that fail, and an optional per-row loss."""

    codes: np.ndarray
    error_rows: np.ndarray
    loss: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[1])

    def error_mask(self) -> np.ndarray:
        error = np.zeros(self.n_rows, bool)
        error[self.error_rows] = True
        return error

    def rows_in(self, key: Key) -> np.ndarray:
        """Boolean mask of the rows inside the slice ``key``."""
        mask = np.ones(self.n_rows, bool)
        for f, v in key:
            mask &= self.codes[f] == v
        return mask


def _cell_counts(key: np.ndarray, failing: np.ndarray, loss: np.ndarray | None, size: int) -> SliceCounts:
    """Group-by counts of integer cell ids ``key``; ``failing`` selects the failing entries of
    ``key`` (indices or a mask), so error counts are a bincount over the failures alone (a few
    percent of the rows), not a weighted pass."""
    n = np.bincount(key, minlength=size)
    k = np.bincount(key[failing], minlength=size)
    if loss is None:
        return SliceCounts(n, k, np.zeros(size), np.zeros(size))
    return SliceCounts(n, k, np.bincount(key, weights=loss, minlength=size),
                       np.bincount(key, weights=loss * loss, minlength=size))


def count_combos(shard: EncodedShard, cards: Sequence[int], combos: list[tuple[int, ...]]) -> dict:
    """For each feature combination: the counts of all its cells on one shard."""
    codes = shard.codes
    out = {}
    prefix, prefix_key = None, None
    for combo in sorted(combos):  # sorted: combos sharing all but their last feature reuse its key
        if combo[:-1] != prefix:
            prefix = combo[:-1]
            prefix_key = np.zeros(shard.n_rows, np.int64)
            for f in prefix:
                prefix_key *= cards[f]
                prefix_key += codes[f]
        key = prefix_key * cards[combo[-1]] + codes[combo[-1]]
        out[combo] = _cell_counts(key, shard.error_rows, shard.loss, int(np.prod([cards[f] for f in combo])))
    return out


def count_children(shard: EncodedShard, cards: Sequence[int], parents: Sequence[Key]) -> dict:
    """For each parent slice: the counts of all its one-predicate refinements, feature by feature,
    from the parent's rows only (pysubgroup's row-subset idea: a deep slice costs its own rows,
    not a pass over the table). Returns parent -> feature -> SliceCounts over that feature's values."""
    error = shard.error_mask()
    out = {}
    for parent in parents:
        rows = np.nonzero(shard.rows_in(parent))[0]
        failing = error[rows]
        loss = None if shard.loss is None else shard.loss[rows]
        used = {f for f, _ in parent}
        out[parent] = {g: _cell_counts(shard.codes[g][rows], failing, loss, card)
                       for g, card in enumerate(cards) if g not in used}
    return out


def merge_children(parts: Iterable[dict]) -> dict:
    """Add up ``count_children`` results of several shards."""
    merged: dict = {}
    for part in parts:
        for key, by_feature in part.items():
            if key not in merged:
                merged[key] = dict(by_feature)
            else:
                for g, counts in by_feature.items():
                    merged[key][g] = merged[key][g] + counts
    return merged


def count_residual(shard: EncodedShard, slice_: Key, others: Sequence[Key]) -> tuple[int, int, int, int]:
    """Rows and errors of ``slice_`` outside every slice in ``others``, and of all rows outside
    them: what is left of a slice once stronger failures are taken out."""
    error = shard.error_mask()
    union = np.zeros(shard.n_rows, bool)
    for other in others:
        union |= shard.rows_in(other)
    rest = shard.rows_in(slice_) & ~union
    pool = ~union
    return int(rest.sum()), int(error[rest].sum()), int(pool.sum()), int(error[pool].sum())


def shard_totals(shard: EncodedShard) -> tuple[float, float, float, float]:
    """Rows, errors, loss sum and loss sum of squares of one shard."""
    if shard.loss is None:
        return shard.n_rows, len(shard.error_rows), 0.0, 0.0
    return shard.n_rows, len(shard.error_rows), float(shard.loss.sum()), float((shard.loss * shard.loss).sum())


class Runner(Protocol):
    """Runs a function of one shard: here, or somewhere else (a Ray task) with handles to wait on."""

    def submit(self, fn: Callable, *args: Any) -> Any: ...

    def get(self, handles: Sequence[Any]) -> list: ...

    def as_completed(self, handles: Sequence[Any]) -> Iterator[Any]: ...


class LocalRunner:
    """Runs shard functions in this process."""

    def submit(self, fn, *args):
        return fn(*args)

    def get(self, handles):
        return list(handles)

    def as_completed(self, handles):
        yield from handles


class ShardCounter:
    """The lattice's counter over encoded shards (or handles to them, in a Ray object store):
    each count runs once per shard through ``runner`` and the driver adds the results."""

    def __init__(self, names: list[str], values: list[list[str]], shards: list, runner: Runner):
        self.names, self.values, self.shards, self.runner = list(names), values, shards, runner
        self.cards = [len(v) for v in values]
        self._totals = runner.get([runner.submit(shard_totals, s) for s in shards])

    def totals(self) -> tuple[int, int, float, float]:
        t = np.sum(np.asarray(self._totals, np.float64).reshape(-1, 4), axis=0)
        return int(t[0]), int(t[1]), float(t[2]), float(t[3])

    def _each(self, fn: Callable, *args: Any) -> list:
        return [self.runner.submit(fn, shard, *args) for shard in self.shards]

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]:
        merged: dict[tuple[int, ...], SliceCounts] = {}
        for counts_by_combo in self.runner.as_completed(self._each(count_combos, self.cards, combos)):
            for combo, counts in counts_by_combo.items():  # merged as shards finish
                merged[combo] = counts if combo not in merged else merged[combo] + counts
        return merged

    def count_children(self, parents: list[Key]) -> dict:
        return merge_children(self.runner.as_completed(self._each(count_children, self.cards, parents)))

    def count_residual(self, slice_: Key, others: list[Key]) -> tuple[int, int, int, int]:
        parts = self.runner.get(self._each(count_residual, slice_, others))
        return tuple(int(x) for x in np.sum(np.asarray(parts, np.int64).reshape(-1, 4), axis=0))
