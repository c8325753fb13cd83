"""The level-wise walk with exact pruning (``prune="exact"``), or none (``prune="none"``).

A slice of order L > 1 is counted only if every one of its parents (one predicate fewer) was
*expandable*: it had at least ``min_support`` rows and, with ``bounded``, an optimistic bound
says some refinement could still be flagged. Bounds (a refinement R of S has n_R <= n_S rows and
k_R <= min(k_S, n_R) errors):

- significance: the smallest p-value any refinement can reach is at n_R = max(min_support,
  min(k_S, n_S)), k_R = min(k_S, n_R); if even that is above ``alpha``, nothing under S can be
  flagged by Benjamini-Hochberg (a flagged slice has p <= q <= alpha);
- support: n_S < min_support.

With BH (its family fixed to the whole lattice) the bound changes how many slices are evaluated,
never the flagged set. With alpha-investing it can: that procedure tests slices in evaluation
order, and pruning changes the order's content. On large tables the bound prunes almost nothing
(a slice with many errors could always hold an all-error refinement): see slices.elevated.
"""

from __future__ import annotations

import numpy as np

from vbugs_ray.slices import stats
from vbugs_ray.slices.lattice import Counter, Evaluated


def best_refinement_log_p(n: np.ndarray, k: np.ndarray, min_support: int, k_total: int, n_total: int) -> np.ndarray:
    """Smallest log p any refinement of each slice can reach (see the module docstring)."""
    n_r = np.maximum(min_support, np.minimum(k, n))
    k_r = np.minimum(k, n_r)
    fisher = stats.fisher_greater_log(k_r, n_r, k_total, n_total)
    z = stats.ztest_greater_log(k_r, n_r, k_total, n_total)
    return np.minimum(fisher, z)


def search(counter: Counter, alpha: float, min_support: int, max_order: int, bounded: bool = True) -> Evaluated:
    """Every slice of the lattice whose parents were all expandable, level by level."""
    cards = [len(v) for v in counter.values]
    n_total, k_total, _, _ = counter.totals()
    preds, rows = [], []
    expandable: set = set()
    combos = [(f,) for f in range(len(cards))]
    for order in range(1, max_order + 1):
        if not combos:
            break
        counts = counter.count(combos)
        level_preds, level = [], []
        for combo in combos:
            c = counts[combo]
            for flat in np.nonzero((c.n >= min_support) & (c.n < n_total))[0]:
                digits = np.unravel_index(flat, [cards[f] for f in combo])
                key = tuple((f, int(d)) for f, d in zip(combo, digits))
                if order > 1 and not all(key[:i] + key[i + 1:] in expandable for i in range(order)):
                    continue
                level_preds.append(key)
                level.append(c.cell(flat))
        if not level_preds:
            break
        preds.extend(level_preds)
        rows.extend(level)
        if order == max_order:
            break
        arr = np.asarray(level)
        n, k = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        can_expand = n >= min_support  # a refinement has at most its parent's rows
        if bounded:  # a branch whose best refinement can't reach p <= alpha holds nothing to flag
            can_expand &= best_refinement_log_p(n, k, min_support, k_total, n_total) <= np.log(alpha)
        expandable = {p for p, ok in zip(level_preds, can_expand) if ok}
        combos = sorted({tuple(sorted({f for f, _ in p} | {g}))
                         for p in expandable for g in range(len(cards)) if g not in {f for f, _ in p}})
    return Evaluated.of(preds, rows)
