"""Slice search: lattice evaluation (slices.lattice), tests, false-discovery control, redundancy.

Every tested slice S is compared with its complement. Null: S's error rate equals the
complement's. Alternative (one-sided): it is higher. Test: Fisher's exact test where expected
counts are small, the two-proportion z-test elsewhere; mean loss gets a one-sided Welch test
from sums. False discoveries: Benjamini-Hochberg over the whole lattice as the family (so that
exact pruning never changes what is flagged), or alpha-investing in evaluation order (whose
result depends on which slices were evaluated, so pruning may change it).

Flagged: rejected, effect >= min_effect. Then, so that each distinct failure appears once near
the top (ranked: distinct failures, then worse parts of them, then explained slices, each tier by
significance):
- a child of a flagged slice is kept only if it fails significantly more than the rest of its
  parent (the one-sided error-rate test within the parent, Bonferroni over the parent's
  flagged children);
- a flagged slice whose excess a flagged refinement explains (the slice minus the refinement is
  not significantly worse than the slice's complement) gets ``explained_by`` and ranks after
  the slices that explain themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from vbugs_ray.slices import elevated, exact, lattice, stats
from vbugs_ray.slices.counts import EncodedShard, LocalRunner, ShardCounter
from vbugs_ray.slices.encode import encode_column
from vbugs_ray.slices.settings import FDR_PROCEDURES, SearchSettings


@dataclass
class SliceResult:
    base_error_rate: float
    n_rows: int
    evaluated: int  # slices tested (the rest of the lattice counts as p = 1)
    lattice_size: int = 0
    prune: str = ""  # the pruning that ran ('auto' resolved)
    flagged: list[dict] = field(default_factory=list)
    redundant_children: int = 0


def bh_qvalues(p: np.ndarray, family: int) -> np.ndarray:
    """Benjamini-Hochberg q-values when ``family`` >= len(p) hypotheses were posed and the rest
    (pruned, never tested) count as p = 1. Written out because scipy's false_discovery_control
    takes no family size."""
    p = np.asarray(p, np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * family / np.arange(1, p.size + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def table_counter(columns: Mapping[str, Sequence], errors: Sequence, loss: Sequence | None,
                  settings: SearchSettings) -> ShardCounter:
    """A counter over an in-memory table: one shard, counted in this process."""
    names, values, codes = [], [], []
    for name, column in columns.items():
        c, labels = encode_column(column, settings.max_values, settings.n_bins)
        names.append(name)
        values.append(labels)
        codes.append(c)
    error_rows = np.nonzero(np.asarray(errors, bool))[0]
    shard = EncodedShard(np.stack(codes), error_rows, None if loss is None else np.asarray(loss, np.float64))
    return ShardCounter(names, values, [shard], LocalRunner())


def search_slices(columns: Mapping[str, Sequence], errors: Sequence, settings: SearchSettings,
                  loss: Sequence | None = None) -> SliceResult:
    """Search an in-memory table: columns name -> values, a 0/1 error per row, optional loss."""
    return run_search(table_counter(columns, errors, loss, settings), settings)


def evaluate(counter: lattice.Counter, settings: SearchSettings) -> tuple[lattice.Evaluated, int, str]:
    """The lattice walk that ``settings.prune`` asks for: the tested slices, the lattice size,
    and the pruning that ran."""
    prune = lattice.resolve_prune(settings.prune, counter.totals()[0])
    family = lattice.lattice_size([len(v) for v in counter.values], settings.max_order)
    if prune == "elevated":
        ev = elevated.search(counter, settings.min_support, settings.max_order, settings.expand_alpha)
    else:
        ev = exact.search(counter, settings.alpha, settings.min_support, settings.max_order, bounded=prune == "exact")
    return ev, family, prune


def run_search(counter: lattice.Counter, settings: SearchSettings) -> SliceResult:
    if settings.fdr not in FDR_PROCEDURES:
        raise ValueError(f"unknown fdr procedure {settings.fdr!r}; allowed: {', '.join(FDR_PROCEDURES)}")
    ev, family, prune = evaluate(counter, settings)
    n_total, k_total, loss_total, loss_sq_total = counter.totals()
    result = SliceResult(base_error_rate=k_total / n_total if n_total else 0.0, n_rows=n_total,
                         evaluated=len(ev.predicates), lattice_size=family, prune=prune)
    if not ev.predicates:
        return result

    n_s, k_s = ev.n, ev.errors
    n_c, k_c = n_total - n_s, k_total - k_s
    p_s, p_c = k_s / n_s, k_c / n_c
    log_p = stats.error_rate_log_p(k_s, n_s, k_total, n_total)
    p_val = np.exp(log_p)
    q_val = bh_qvalues(p_val, family)
    if settings.fdr == "bh":
        reject = q_val <= settings.alpha
    else:  # evaluation order: level by level (with elevated pruning, which slices are in it depends on the data)
        reject = stats.alpha_investing(p_val, settings.alpha)
    effect = stats.effect_size(p_s, p_c)
    keep = reject & (effect >= settings.min_effect) & (p_s > p_c)
    flagged = [int(i) for i in np.nonzero(keep)[0]]

    index = {frozenset(ev.predicates[i]): i for i in flagged}
    flagged, parent_of = _drop_redundant_children(flagged, ev.predicates, index, n_s, k_s, settings.alpha)
    result.redundant_children = len(index) - len(flagged)
    by_strength = sorted(flagged, key=lambda i: (log_p[i], -effect[i]))
    explained = _explained_by_stronger(by_strength, ev.predicates, n_s, k_s, n_total, k_total, settings, counter)

    low, high = stats.clopper_pearson(k_s, n_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss_mean = ev.loss_sum / n_s
    loss_p = np.ones(len(n_s))
    if flagged and loss_sq_total > 0:  # the loss test only for what is reported, only with a loss
        fi = np.asarray(flagged)
        loss_p[fi] = stats.welch_greater(ev.loss_sum[fi], ev.loss_sq[fi], n_s[fi], loss_total, loss_sq_total, n_total)
    names, values = counter.names, counter.values

    def named(pred) -> dict:
        return {names[f]: values[f][v] for f, v in pred}

    def tier(i: int) -> int:
        """0: a distinct failure; 1: a worse part of a listed failure; 2: explained by another."""
        if i in explained:
            return 2
        return 1 if i in parent_of and parent_of[i] not in explained else 0

    order = sorted(flagged, key=lambda i: (tier(i), log_p[i], -effect[i], len(ev.predicates[i])))
    result.flagged = [
        {
            "predicates": named(ev.predicates[i]),
            "order": len(ev.predicates[i]),
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
            "loss_mean": float(loss_mean[i]),
            "loss_p_value": float(loss_p[i]),
            "parent": named(ev.predicates[parent_of[i]]) if i in parent_of else None,
            "explained_by": named(ev.predicates[explained[i]]) if i in explained else None,
        }
        for i in order
    ]
    return result


def _parents(pred: tuple) -> list[frozenset]:
    return [frozenset(pred[:j] + pred[j + 1:]) for j in range(len(pred))] if len(pred) > 1 else []


def _drop_redundant_children(flagged, preds, index, n_s, k_s, alpha):
    """Keep a child of flagged parents only if it fails significantly more than each parent's rest."""
    children: dict[int, list[int]] = {}
    for i in flagged:
        for parent in _parents(preds[i]):
            if parent in index:
                children.setdefault(index[parent], []).append(i)
    redundant, parent_of = set(), {}
    for parent, kids in children.items():
        kids_arr = np.asarray(kids)
        within = stats.error_rate_log_p(k_s[kids_arr], n_s[kids_arr], int(k_s[parent]), int(n_s[parent]))
        for kid, lp in zip(kids, within):
            if lp > np.log(alpha / len(kids)):
                redundant.add(kid)
            else:
                parent_of.setdefault(kid, parent)
    return [i for i in flagged if i not in redundant], parent_of


def _explained_by_stronger(by_strength, preds, n_s, k_s, n_total, k_total, settings, counter,
                           max_leaders: int = 50, max_checked: int = 200) -> dict[int, int]:
    """Slices whose excess more significant flagged slices account for.

    Leaders are taken in order of significance. A slice S explains itself only if, with the rows
    of every stronger leader that overlaps it removed, what is left of S still passes the flag
    criteria (the one-sided error-rate test at alpha, effect >= min_effect) against the rest of the remaining
    rows; otherwise it is explained by the strongest overlapping leader. Overlap covers
    refinements and slices that merely cut across a stronger one. Checked for the
    ``max_checked`` most significant slices against up to ``max_leaders`` leaders."""
    leaders: list[int] = []
    explained: dict[int, int] = {}
    for s in by_strength[:max_checked]:
        s_items = dict(preds[s])
        overlapping = [t for t in leaders
                       if not any(f in s_items and s_items[f] != v for f, v in preds[t])       # not disjoint
                       and not all(s_items.get(f) == v for f, v in preds[t])]                 # S not inside T
        if overlapping:
            rest_n, rest_k, pool_n, pool_k = counter.count_residual(preds[s], [preds[t] for t in overlapping])
            if rest_n == 0 or pool_n == rest_n:
                self_explaining = False
            else:
                lp = stats.error_rate_log_p(np.array([rest_k]), np.array([rest_n]), pool_k, pool_n)[0]
                p_rest, p_other = rest_k / rest_n, (pool_k - rest_k) / (pool_n - rest_n)
                effect = stats.effect_size(np.array([p_rest]), np.array([p_other]))[0]
                self_explaining = lp <= np.log(settings.alpha) and effect >= settings.min_effect
            if not self_explaining:
                explained[s] = overlapping[0]
        if s not in explained and len(leaders) < max_leaders:
            leaders.append(s)
    return explained
