"""Level-wise lattice search over conjunctions of ``column = value`` predicates (pure numpy).

Level L holds slices of L predicates. With ``prune="exact"``, a slice is counted only if every
one of its parents (one predicate fewer) was *expandable*: it had at least ``min_support`` rows and an optimistic bound
says some refinement could still be flagged. Bounds (a refinement R of S has n_R <= n_S rows and
k_R <= min(k_S, n_R) errors):

- significance: the smallest p-value any refinement can reach is at n_R = max(min_support,
  min(k_S, n_S)), k_R = min(k_S, n_R); if even that is above ``alpha``, nothing under S can be
  flagged (a flagged slice has p <= q <= alpha);
- support: n_S < min_support.

Both are exact for what BH flags (the family size is fixed to the whole lattice, see
``lattice_size``), so pruning changes how many slices are evaluated, never the flagged set
(``prune="exact"``). On large tables they prune almost nothing: a slice with many errors could
always hold an all-error refinement.

``prune="elevated"`` (AutoSlicer's prioritisation; what ``"auto"``, the default, uses from a
million rows on, see ``resolve_prune``) expands a slice only if it fails
more than its complement and, along every predicate it adds to a parent, interacts (see
``_interacts``), one-sided at p <= ``expand_alpha`` and ``INTERACTION_ALPHA`` (0.01); a slice is evaluated when one of its
parents is expandable, its counts taken from that parent's rows. A failure inside S also raises
the error rate of every superset of S, so this follows failures down the lattice and skips the
slices whose parents look normal. What it can miss: a failure with no visibly elevated parent,
because an error deficit elsewhere in each parent cancels it (a pure interaction) or because it
is too weak for its parents' size (each parent P of C needs roughly z_C * sqrt(n_C / n_P) above
the expansion threshold). Unevaluated slices count as p = 1 in BH's family, so false-discovery
control holds either way; a test checks that the distinct failures it reports match the
exhaustive search's on planted tables.

``prune="none"`` evaluates everything (the reference in tests).

Counting goes through a *counter* (``count(combo) -> SliceCounts``) so the same search runs over
an in-memory table (``TableCounter``) or over Parquet shards with Ray tasks (slices.distributed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from scipy import special

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


def count_children(codes, error: np.ndarray, loss: np.ndarray | None, cards: Sequence[int],
                   parents: Sequence[tuple[tuple[int, int], ...]]) -> dict:
    """For each parent slice: the counts of all its one-predicate refinements, feature by feature,
    from the parent's rows only (pysubgroup's row-subset idea: a deep slice costs its own rows,
    not a pass over the table). Returns parent -> feature -> SliceCounts over that feature's values."""
    out = {}
    for key in parents:
        rows = np.nonzero(_mask(codes, len(error), key))[0]
        err_rows = rows[error[rows]]
        used = {f for f, _ in key}
        by_feature = {}
        for g, card in enumerate(cards):
            if g in used:
                continue
            col = codes[g]
            n = np.bincount(col[rows], minlength=card)
            k = np.bincount(col[err_rows], minlength=card)
            if loss is None:
                ls = lsq = np.zeros(card)
            else:
                ls = np.bincount(col[rows], weights=loss[rows], minlength=card)
                lsq = np.bincount(col[rows], weights=loss[rows] ** 2, minlength=card)
            by_feature[g] = SliceCounts(n, k, ls, lsq)
        out[key] = by_feature
    return out


def merge_children(parts: Sequence[dict]) -> dict:
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


class Counter(Protocol):
    names: list[str]
    values: list[list[str]]

    def totals(self) -> tuple[int, int, float, float]: ...

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]: ...

    def count_residual(self, slice_: tuple, others: list[tuple]) -> tuple[int, int, int, int]: ...

    def count_children(self, parents: list[tuple]) -> dict: ...


class TableCounter:
    """Counts over integer-coded columns held in memory."""

    def __init__(self, names: list[str], values: list[list[str]], codes: list[np.ndarray],
                 error: np.ndarray, loss: np.ndarray | None = None):
        self.names, self.values, self.codes = names, values, codes
        self.error = np.asarray(error, np.float64)
        self.is_error = self.error.astype(bool)  # the row filters of residuals and children take a mask
        self.loss = None if loss is None else np.asarray(loss, np.float64)

    def totals(self) -> tuple[int, int, float, float]:
        loss = self.loss if self.loss is not None else np.zeros(1)
        return len(self.error), int(self.error.sum()), float(loss.sum()), float((loss * loss).sum())

    def count(self, combos: list[tuple[int, ...]]) -> dict[tuple[int, ...], SliceCounts]:
        cards = [len(v) for v in self.values]
        return {c: count_cells([self.codes[f] for f in c], [cards[f] for f in c], self.error, self.loss)
                for c in combos}

    def count_residual(self, slice_, others):
        return residual_counts(self.codes, self.is_error, slice_, others)

    def count_children(self, parents):
        return count_children(self.codes, self.is_error, self.loss, [len(v) for v in self.values], parents)


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


PRUNE_MODES = ("auto", "elevated", "exact", "none")
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


def search(counter: Counter, *, alpha: float, min_support: int, max_order: int, prune: str = "auto",
           expand_alpha: float = 0.1) -> tuple[Evaluated, int]:
    """Evaluate the lattice level by level; returns the tested slices and the lattice size.
    ``prune``: 'auto', 'elevated', 'exact' or 'none' (every slice with support: the exhaustive
    reference)."""
    prune = resolve_prune(prune, counter.totals()[0])
    if prune == "elevated":
        return _search_elevated(counter, min_support, max_order, expand_alpha)
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
        if prune == "exact":
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



Key = tuple[tuple[int, int], ...]
INTERACTION_ALPHA = 0.01


def _interacts(keys: list[Key], n: np.ndarray, k: np.ndarray, seen: dict, n_total: int, k_total: int,
               expand_alpha: float) -> np.ndarray:
    """For each slice C and each way to write it as C = P AND q (P a parent, q one predicate):
    does q raise the error rate inside P more than it does in the whole table? The contrast is
    (p_C - p_(P not q)) - (p_q - p_(not q)), one-sided z with pooled variance (a screening
    heuristic, not a reported test). Two independent failures A and B make A AND B look worse
    than the rest of A, but only as much as B does everywhere: no interaction, no expansion."""
    idx, rows = [], []
    for i, key in enumerate(keys):
        for j in range(len(key)):
            parent, single = key[:j] + key[j + 1:], (key[j],)
            if parent in seen and single in seen:
                idx.append(i)
                rows.append((*seen[parent], *seen[single]))
    ok = np.ones(len(keys), bool)
    if not idx:
        return ok
    i = np.asarray(idx)
    n_p, k_p, n_q, k_q = np.asarray(rows, np.float64).T
    n_c, k_c = n[i].astype(np.float64), k[i].astype(np.float64)
    p0 = k_total / n_total
    with np.errstate(divide="ignore", invalid="ignore"):
        contrast = (k_c / n_c - (k_p - k_c) / (n_p - n_c)) - (k_q / n_q - (k_total - k_q) / (n_total - n_q))
        se = np.sqrt(p0 * (1 - p0) * (1 / n_c + 1 / (n_p - n_c) + 1 / n_q + 1 / (n_total - n_q)))
        z = np.where((n_p > n_c) & (se > 0), contrast / se, -np.inf)
    passed = special.log_ndtr(-z) <= np.log(expand_alpha)
    np.logical_and.at(ok, i, passed)
    return ok


def _search_elevated(counter: Counter, min_support: int, max_order: int, expand_alpha: float
                     ) -> tuple[Evaluated, int]:
    """Led by evidence: a slice is a candidate when one of its parents is *expandable*, i.e. fails
    more than the rest of the table (one-sided, p <= ``expand_alpha``) and, from order 2, each
    predicate it adds to a parent interacts (``_interacts``, p <= ``INTERACTION_ALPHA``). The
    second test is SliceFinder's insight turned into pruning: the sub-slices of one strong failure
    (the failure AND any other predicate), and the overlap of two independent failures, are
    tested but never expanded. Children are counted from their parent's rows."""
    cards = [len(v) for v in counter.values]
    n_total, k_total, _, _ = counter.totals()
    family = lattice_size(cards, max_order)
    log_alpha = np.log(expand_alpha)
    seen: dict[Key, tuple[int, int]] = {}  # evaluated slice -> (n, errors)
    preds: list[Key] = []
    parts: list[np.ndarray] = []
    singles = counter.count([(f,) for f in range(len(cards))])
    level: dict[Key, np.ndarray] = {((f, v),): np.array([c.n[v], c.errors[v], c.loss_sum[v], c.loss_sq[v]], np.float64)
                                    for (f,), c in singles.items() for v in range(cards[f])}
    for order in range(1, max_order + 1):
        level = {key: row for key, row in level.items() if min_support <= row[0] < n_total}
        if not level:
            break
        level_keys = sorted(level)
        arr = np.stack([level[key] for key in level_keys])
        preds.extend(level_keys)
        parts.append(arr)
        n, k = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        seen.update(zip(level_keys, zip(n.tolist(), k.tolist())))
        if order == max_order:
            break
        expandable = stats.error_rate_log_p(k, n, k_total, n_total) <= log_alpha
        if order > 1:  # and an interaction, along every predicate it adds to a parent
            expandable &= _interacts(level_keys, n, k, seen, n_total, k_total, INTERACTION_ALPHA)
        grow = [key for key, ok in zip(level_keys, expandable) if ok]
        if not grow:
            break
        level = {}
        for key, by_feature in counter.count_children(grow).items():
            for g, c in by_feature.items():
                for v in range(cards[g]):
                    child = tuple(sorted(key + ((g, v),)))
                    if child not in level:
                        level[child] = np.array([c.n[v], c.errors[v], c.loss_sum[v], c.loss_sq[v]], np.float64)
    if not preds:
        empty = np.zeros(0)
        return Evaluated([], empty.astype(np.int64), empty.astype(np.int64), empty, empty), family
    arr = np.concatenate(parts)
    return Evaluated(preds, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3]), family
