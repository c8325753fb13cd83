"""The walk led by evidence (``prune="elevated"``, AutoSlicer's prioritisation).

A slice is a candidate when one of its parents is *expandable*: it fails more than the rest of
the table (one-sided, p <= ``expand_alpha``) and, from order 2, each predicate it adds to a
parent interacts (``interacts``, p <= ``INTERACTION_ALPHA``); its counts are taken from that
parent's rows. A failure inside S also raises the error rate of every superset of S, so this
follows failures down the lattice and skips the slices whose parents look normal. The interaction
test is SliceFinder's insight turned into pruning: the sub-slices of one strong failure (the
failure AND any other predicate), and the overlap of two independent failures, are tested but
never expanded.

What it can miss: a failure with no visibly elevated parent, because an error deficit elsewhere
in each parent cancels it (a pure interaction) or because it is too weak for its parents' size
(each parent P of C needs roughly z_C * sqrt(n_C / n_P) above the expansion threshold).
Unevaluated slices count as p = 1 in BH's family, so false-discovery control holds either way;
tests check that the distinct failures it reports match the exhaustive search's on planted tables.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from vbugs_ray.slices import stats
from vbugs_ray.slices.counts import Key
from vbugs_ray.slices.lattice import Counter, Evaluated

INTERACTION_ALPHA = 0.01


def interacts(keys: list[Key], n: np.ndarray, k: np.ndarray, seen: dict, n_total: int, k_total: int,
              alpha: float) -> np.ndarray:
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
    passed = special.log_ndtr(-z) <= np.log(alpha)
    np.logical_and.at(ok, i, passed)
    return ok


def search(counter: Counter, min_support: int, max_order: int, expand_alpha: float) -> Evaluated:
    cards = [len(v) for v in counter.values]
    n_total, k_total, _, _ = counter.totals()
    log_alpha = np.log(expand_alpha)
    seen: dict[Key, tuple[int, int]] = {}  # evaluated slice -> (n, errors)
    preds: list[Key] = []
    rows: list[np.ndarray] = []
    singles = counter.count([(f,) for f in range(len(cards))])
    level: dict[Key, np.ndarray] = {((f, v),): c.cell(v) for (f,), c in singles.items() for v in range(cards[f])}
    for order in range(1, max_order + 1):
        level = {key: row for key, row in level.items() if min_support <= row[0] < n_total}
        if not level:
            break
        level_keys = sorted(level)
        arr = np.stack([level[key] for key in level_keys])
        preds.extend(level_keys)
        rows.extend(arr)
        n, k = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        seen.update(zip(level_keys, zip(n.tolist(), k.tolist())))
        if order == max_order:
            break
        expandable = stats.error_rate_log_p(k, n, k_total, n_total, large="normal") <= log_alpha  # screening
        if order > 1:  # and an interaction, along every predicate it adds to a parent
            expandable &= interacts(level_keys, n, k, seen, n_total, k_total, INTERACTION_ALPHA)
        grow = [key for key, ok in zip(level_keys, expandable) if ok]
        if not grow:
            break
        level = {}
        for key, by_feature in counter.count_children(grow).items():
            for g, c in by_feature.items():
                for v in range(cards[g]):
                    level.setdefault(tuple(sorted(key + ((g, v),))), c.cell(v))
    return Evaluated.of(preds, rows)
