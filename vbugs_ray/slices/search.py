"""The first slice search: every slice of order 1..max_order (max 2) over the metadata columns,
each tested one-sided against its complement, with Benjamini-Hochberg across all tested slices.

A slice is a conjunction of ``column = value`` predicates. Counting is one ``bincount`` per
column (pair) over integer codes, so the cost is O(rows x columns^2), not one pass per slice.
Flagged: q <= alpha, support >= min_support, effect >= min_effect. Ranked by p-value, with slices
that a flagged parent explains (``explained_by``) after the ones that explain themselves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from vbugs_ray.slices import stats


@dataclass(frozen=True)
class SearchSettings:
    alpha: float = 0.05
    min_support: int = 20
    max_order: int = 2
    min_effect: float = 0.2


@dataclass
class SliceResult:
    base_error_rate: float
    n_rows: int
    n_tested: int
    flagged: list[dict] = field(default_factory=list)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return uniques, codes.astype(np.int64)


def search_slices(columns: Mapping[str, Sequence], errors: Sequence[bool], settings: SearchSettings) -> SliceResult:
    """Test every slice up to ``settings.max_order`` over ``columns`` for an excess error rate."""
    err = np.asarray(errors, dtype=bool)
    n_total = int(err.size)
    k_total = int(err.sum())
    encoded = {name: _codes(vals) for name, vals in columns.items()}
    names = list(encoded)

    preds, ns, ks = [], [], []
    for order in range(1, settings.max_order + 1):
        for combo in itertools.combinations(names, order):
            cards = [len(encoded[c][0]) for c in combo]
            key = np.zeros(n_total, np.int64)
            for c, card in zip(combo, cards):
                key = key * card + encoded[c][1]
            size = int(np.prod(cards))
            n = np.bincount(key, minlength=size)
            k = np.bincount(key, weights=err, minlength=size).round().astype(np.int64)
            for flat in np.nonzero(n >= settings.min_support)[0]:
                if n[flat] == n_total:
                    continue  # the whole table has no complement to test against
                digits = np.unravel_index(flat, cards)
                preds.append({c: str(encoded[c][0][d]) for c, d in zip(combo, digits)})
                ns.append(n[flat])
                ks.append(k[flat])

    result = SliceResult(base_error_rate=k_total / n_total if n_total else 0.0, n_rows=n_total, n_tested=len(preds))
    if not preds:
        return result
    n_s, k_s = np.asarray(ns, np.int64), np.asarray(ks, np.int64)
    n_c, k_c = n_total - n_s, k_total - k_s
    p_s, p_c = k_s / n_s, k_c / n_c
    log_p = stats.fisher_greater_log(k_s, n_s, k_total, n_total)
    p_val = np.exp(log_p)
    q_val = stats.benjamini_hochberg(p_val)
    effect = stats.effect_size(p_s, p_c)
    low, high = stats.clopper_pearson(k_s, n_s)
    keep = (q_val <= settings.alpha) & (effect >= settings.min_effect) & (p_s > p_c)
    flagged = [int(i) for i in np.nonzero(keep)[0]]
    explained = _explained_by_parent(flagged, preds, n_s, k_s, settings.alpha)
    # unexplained slices first, each group by significance: one failure, one line near the top
    order = sorted(flagged, key=lambda i: (i in explained, log_p[i], -effect[i], len(preds[i])))
    result.flagged = [
        {
            "predicates": preds[i],
            "order": len(preds[i]),
            "n": int(n_s[i]),
            "errors": int(k_s[i]),
            "error_rate": float(p_s[i]),
            "complement_error_rate": float(p_c[i]),
            "p_value": float(p_val[i]),
            "log10_p_value": float(log_p[i] / np.log(10)),
            "q_value": float(q_val[i]),
            "effect": float(effect[i]),
            "ci_low": float(low[i]),
            "ci_high": float(high[i]),
            "explained_by": explained.get(i),
        }
        for i in order
    ]
    return result


def _explained_by_parent(flagged: list[int], preds: list[dict], n_s: np.ndarray, k_s: np.ndarray,
                         alpha: float) -> dict[int, dict]:
    """Flagged slices whose excess a flagged parent (one predicate fewer) already accounts for.

    A child C of a flagged parent P is explained by P unless C fails significantly more than the
    rest of P (one-sided Fisher within P, Bonferroni over P's flagged children). Explained slices
    stay flagged (BH made them discoveries) but rank after the slices that explain themselves.
    """
    index = {frozenset(preds[i].items()): i for i in flagged}
    children: dict[int, list[int]] = {}
    for i in flagged:
        if len(preds[i]) < 2:
            continue
        for item in preds[i].items():
            parent = index.get(frozenset(preds[i].items()) - {item})
            if parent is not None:
                children.setdefault(parent, []).append(i)
    explained: dict[int, dict] = {}
    for parent, kids in children.items():
        kids_arr = np.asarray(kids)
        log_p = stats.fisher_greater_log(k_s[kids_arr], n_s[kids_arr], int(k_s[parent]), int(n_s[parent]))
        for kid, lp in zip(kids, log_p):
            if lp > np.log(alpha / len(kids)) and kid not in explained:
                explained[kid] = preds[parent]
    return explained
