"""The slice lattice: conjunctions of up to ``max_order`` ``column = value`` predicates, evaluated
level by level (level L holds slices of L predicates), and how much of it is counted.

``prune`` chooses the walk: ``exact`` (slices.exact: an optimistic significance bound, exact for
what Benjamini-Hochberg flags), ``elevated`` (slices.elevated: AutoSlicer's prioritisation,
follows failures and tests a few percent of the lattice), ``none`` (every slice with support:
the reference in tests) or ``auto`` (``resolve_prune``). Whatever is pruned, the false-discovery
family is the whole lattice (``lattice_size``): unevaluated slices count as p = 1.

Counting goes through a *counter* (slices.counts) so the same walk runs over an in-memory table
or over Parquet shards counted by Ray tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from vbugs_ray.slices.counts import Key, SliceCounts
from vbugs_ray.slices.settings import PRUNE_MODES


class Counter(Protocol):
    names: list[str]
    values: list[list[str]]

    def totals(self) -> tuple[int, int, float, float]: ...

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]: ...

    def count_residual(self, slice_: Key, others: list[Key]) -> tuple[int, int, int, int]: ...

    def count_children(self, parents: list[Key]) -> dict: ...


def lattice_size(cards: Sequence[int], max_order: int) -> int:
    """Number of slices of order 1..max_order: the BH family, whatever is pruned."""
    return int(sum(np.prod([cards[f] for f in combo])
                   for order in range(1, max_order + 1)
                   for combo in itertools.combinations(range(len(cards)), order)))


@dataclass
class Evaluated:
    """All tested slices of one search, as parallel arrays (row i = slice i)."""

    predicates: list[Key]
    n: np.ndarray
    errors: np.ndarray
    loss_sum: np.ndarray
    loss_sq: np.ndarray

    @classmethod
    def of(cls, preds: list[Key], rows: list[np.ndarray]) -> "Evaluated":
        """From per-slice (n, errors, loss_sum, loss_sq) rows in evaluation order."""
        arr = np.asarray(rows, np.float64).reshape(-1, 4)
        return cls(preds, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3])


ELEVATED_MIN_ROWS = 1_000_000  # "auto" follows failures from here on; below, exact pruning


def resolve_prune(prune: str, n_rows: int) -> str:
    """'auto': 'elevated' on tables of a million rows or more, 'exact' below. The elevated search
    finds a failure through its parents' excess, which grows with the table (a 0.5% slice at 3x
    the base rate lifts its one-predicate parents by z ~ 5 at a million rows, ~1.6 at 100k),
    while exact pruning's cost grows with it: each is used where it is strong."""
    if prune not in PRUNE_MODES:
        raise ValueError(f"unknown prune mode {prune!r}; allowed: {', '.join(PRUNE_MODES)}")
    if prune == "auto":
        return "elevated" if n_rows >= ELEVATED_MIN_ROWS else "exact"
    return prune
