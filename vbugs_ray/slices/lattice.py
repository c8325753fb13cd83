"""Level-wise lattice search over conjunctions of ``column = value`` predicates (pure numpy).

Level L holds slices of L predicates. A slice is counted only if every one of its parents (one
predicate fewer) was *expandable*: it had at least ``min_support`` rows and an optimistic bound
says some refinement could still be flagged. Bounds (a refinement R of S has n_R <= n_S rows and
k_R <= min(k_S, n_R) errors):

- significance: the smallest p-value any refinement can reach is at n_R = max(min_support,
  min(k_S, n_S)), k_R = min(k_S, n_R); if even that is above ``alpha``, nothing under S can be
  flagged (a flagged slice has p <= q <= alpha);
- support: n_S < min_support.

Both are exact for what BH flags (the family size is fixed to the whole lattice, see
``lattice_size``), so pruning changes how many slices are evaluated, never the flagged set.

Counting goes through a *counter* (``count(combo) -> SliceCounts``) so the same search runs over
an in-memory table (``TableCounter``) or over Parquet shards with Ray tasks (slices.distributed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from vbugs_ray.slices import stats


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


def count_cells(codes: Sequence[np.ndarray], cards: Sequence[int], error: np.ndarray,
                loss: np.ndarray | None) -> SliceCounts:
    """Group-by counts of one feature combination over integer codes: one bincount per statistic."""
    key = np.zeros(len(error), np.int64)
    for c, card in zip(codes, cards):
        key *= card
        key += c
    size = int(np.prod(cards))
    n = np.bincount(key, minlength=size)
    k = np.bincount(key, weights=error, minlength=size).round().astype(np.int64)
    if loss is None:
        zeros = np.zeros(size)
        return SliceCounts(n, k, zeros, zeros.copy())
    return SliceCounts(n, k, np.bincount(key, weights=loss, minlength=size),
                       np.bincount(key, weights=loss * loss, minlength=size))


class Counter(Protocol):
    names: list[str]
    values: list[list[str]]

    def totals(self) -> tuple[int, int, float, float]: ...

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]: ...

    def count_residual(self, slice_: tuple, others: list[tuple]) -> tuple[int, int, int, int]: ...


class TableCounter:
    """Counts over integer-coded columns held in memory."""

    def __init__(self, names: list[str], values: list[list[str]], codes: list[np.ndarray],
                 error: np.ndarray, loss: np.ndarray | None = None):
        self.names, self.values, self.codes = names, values, codes
        self.error = np.asarray(error, np.float64)
        self.loss = None if loss is None else np.asarray(loss, np.float64)

    def totals(self) -> tuple[int, int, float, float]:
        loss = self.loss if self.loss is not None else np.zeros(1)
        return len(self.error), int(self.error.sum()), float(loss.sum()), float((loss * loss).sum())

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]:
        cards = [len(v) for v in self.values]
        return {c: count_cells([self.codes[f] for f in c], [cards[f] for f in c], self.error, self.loss)
                for c in combos}

    def count_residual(self, slice_, others):
        return residual_counts(self.codes, self.error.astype(bool), slice_, others)


def _mask(codes, n_rows: int, conjunction) -> np.ndarray:
    mask = np.ones(n_rows, bool)
    for f, v in conjunction:
        mask &= codes[f] == v
    return mask


def residual_counts(codes, error: np.ndarray, slice_, others) -> tuple[int, int, int, int]:
    """Rows and errors of ``slice_`` outside every slice in ``others``, and of all rows outside
    them: what is left of a slice once stronger failures are taken out."""
    union = np.zeros(len(error), bool)
    for conj in others:
        union |= _mask(codes, len(error), conj)
    rest = _mask(codes, len(error), slice_) & ~union
    pool = ~union
    return int(rest.sum()), int(error[rest].sum()), int(pool.sum()), int(error[pool].sum())


def lattice_size(cards: Sequence[int], max_order: int) -> int:
    """Number of slices of order 1..max_order: the BH family, whatever is pruned."""
    return int(sum(np.prod([cards[f] for f in combo])
                   for order in range(1, max_order + 1)
                   for combo in itertools.combinations(range(len(cards)), order)))


@dataclass
class Evaluated:
    """All tested slices of one search, as parallel arrays (row i = slice i)."""

    predicates: list[tuple[tuple[int, int], ...]]
    n: np.ndarray
    errors: np.ndarray
    loss_sum: np.ndarray
    loss_sq: np.ndarray


def _best_refinement_log_p(n: np.ndarray, k: np.ndarray, min_support: int, k_total: int, n_total: int) -> np.ndarray:
    """Smallest log p any refinement of each slice can reach (see the module docstring)."""
    n_r = np.maximum(min_support, np.minimum(k, n))
    k_r = np.minimum(k, n_r)
    fisher = stats.fisher_greater_log(k_r, n_r, k_total, n_total)
    z = stats.ztest_greater_log(k_r, n_r, k_total, n_total)
    return np.minimum(fisher, z)


def search(counter: Counter, *, alpha: float, min_support: int, max_order: int, prune: bool = True
           ) -> tuple[Evaluated, int]:
    """Evaluate the lattice level by level; returns the tested slices and the lattice size.
    ``prune=False`` counts every slice with support (the exhaustive reference)."""
    cards = [len(v) for v in counter.values]
    n_total, k_total, _, _ = counter.totals()
    family = lattice_size(cards, max_order)
    preds: list[tuple[tuple[int, int], ...]] = []
    parts: list[tuple[np.ndarray, ...]] = []
    expandable: set[tuple[tuple[int, int], ...]] = set()
    combos = [(f,) for f in range(len(cards))]
    for order in range(1, max_order + 1):
        if not combos:
            break
        counts = counter.count(combos)
        level_preds, level = [], []
        for combo in combos:
            c = counts[combo]
            cells = np.nonzero((c.n >= min_support) & (c.n < n_total))[0]
            for flat in cells:
                digits = np.unravel_index(flat, [cards[f] for f in combo])
                key = tuple((f, int(d)) for f, d in zip(combo, digits))
                if order > 1 and not all(key[:i] + key[i + 1:] in expandable for i in range(order)):
                    continue
                level_preds.append(key)
                level.append((c.n[flat], c.errors[flat], c.loss_sum[flat], c.loss_sq[flat]))
        if not level_preds:
            break
        arr = np.asarray(level, np.float64).reshape(-1, 4)
        preds.extend(level_preds)
        parts.append(tuple(arr.T))
        if order == max_order:
            break
        n, k = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        can_expand = n >= min_support  # a refinement has at most its parent's rows
        if prune:
            # a flagged slice has p <= q <= alpha, so a branch whose best refinement can't reach
            # p <= alpha holds nothing to flag
            best = _best_refinement_log_p(n, k, min_support, k_total, n_total)
            can_expand &= best <= np.log(alpha)
        expandable = {p for p, ok in zip(level_preds, can_expand) if ok}
        combos = sorted({tuple(sorted({f for f, _ in p} | {g}))
                         for p in expandable for g in range(len(cards)) if g not in {f for f, _ in p}})
        combos = [c for c in combos if len(c) == order + 1]
    if not preds:
        empty = np.zeros(0)
        return Evaluated([], empty.astype(np.int64), empty.astype(np.int64), empty, empty), family
    n, k, ls, lsq = (np.concatenate(x) for x in zip(*parts))
    return Evaluated(preds, n.astype(np.int64), k.astype(np.int64), ls, lsq), family

