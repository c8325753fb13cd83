"""Turning fresh images into verdicts, and verdicts into bugs.

The test of a hypothesis H of class C, on the valid fresh rows of one round:
- null: H's images fail no more often than C's base images (same prompt template, nothing fixed
  but the class; generated afresh for the purpose);
- alternative (one-sided): H's error rate is higher;
- Fisher's exact test, one-sided (``scipy.stats.fisher_exact``), then Benjamini-Hochberg over every
  hypothesis of the round at ``alpha / rounds`` (verify.settings: the rounds share ``alpha``).

Pruning (Wiles et al. 2022): when a verified description loses one part, the child is tested the
same way, and the part is *needed* only if the parent fails significantly more than the child
(one-sided Fisher, parent > child, at the round's level); parts that are not needed are dropped
from the bug's description.

One failure, one bug: verified hypotheses of one class are merged when one refines the other,
when the failures they were drawn from are mostly the same rows of the run, or when their fresh
failures are confused the same way (``merge_bugs``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import fisher_exact

from vbugs_ray.slices.search import bh_qvalues
from vbugs_ray.slices.stats import clopper_pearson
from vbugs_ray.spec import AuditSpec
from vbugs_ray.verify.hypotheses import Hypothesis
from vbugs_ray.verify.plan import BASE

SAME_FAILURES = 0.5
SAME_CONFUSIONS = 0.25


@dataclass
class Verdict:
    key: str
    round: int
    n: int
    errors: int
    error_rate: float
    base_n: int
    base_errors: int
    base_error_rate: float
    ci_low: float
    ci_high: float
    p_value: float
    q_value: float
    verified: bool
    top_wrong_predictions: list
    row_ids: list

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Arm:
    """The valid fresh rows of one arm (a hypothesis or a class's base)."""

    n: int
    errors: int
    row_ids: list
    wrong: Counter

    @classmethod
    def of(cls, mask: np.ndarray, rows: dict[str, np.ndarray]) -> "Arm":
        valid = mask & rows["valid"]
        err = valid & rows["error"]
        return cls(int(valid.sum()), int(err.sum()), rows["row_id"][valid].tolist(), Counter(rows["pred"][err].tolist()))


def arms_of(rows: dict[str, np.ndarray]) -> dict[str, Arm]:
    """Each arm's valid rows, from the columns of a round's stored rows."""
    return {name: Arm.of(rows["hypothesis"] == name, rows) for name in np.unique(rows["hypothesis"])}


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided exact p-value that arm 1 fails more often than arm 2."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
    return min(float(p), 1.0)  # scipy's sum of tail probabilities can exceed 1 by rounding


def judge_round(tests: list[Hypothesis], arms: dict[str, Arm], alpha: float, round_index: int) -> dict[str, Verdict]:
    """Verdicts for one round's hypotheses against their classes' base arms, BH at ``alpha``."""
    p = []
    for h in tests:
        arm, base = arms[h.key], arms[BASE + h.class_name]
        p.append(fisher_greater(arm.errors, arm.n, base.errors, base.n))
    q = bh_qvalues(np.asarray(p), len(p))
    verdicts = {}
    for h, p_value, q_value in zip(tests, p, q):
        arm, base = arms[h.key], arms[BASE + h.class_name]
        low, high = clopper_pearson(np.array([arm.errors]), np.array([arm.n]))
        verdicts[h.key] = Verdict(
            key=h.key, round=round_index, n=arm.n, errors=arm.errors, error_rate=arm.errors / max(arm.n, 1),
            base_n=base.n, base_errors=base.errors, base_error_rate=base.errors / max(base.n, 1),
            ci_low=float(low[0]), ci_high=float(high[0]), p_value=p_value, q_value=float(q_value),
            verified=bool(q_value <= alpha and arm.n > 0),
            top_wrong_predictions=[[name, count] for name, count in arm.wrong.most_common(3)], row_ids=arm.row_ids)
    return verdicts


def part_needed(parent: Verdict, child: Verdict, alpha: float) -> bool:
    """Does dropping the part lower the failure rate? (parent fails more than child, one-sided)."""
    return fisher_greater(parent.errors, parent.n, child.errors, child.n) <= alpha


def _jaccard(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 0.0


def confusion_distance(a: Verdict, b: Verdict) -> float:
    """Total variation distance between the wrong predictions of two arms' failing images (their
    top three, the rest pooled as one 'other' bucket); 1.0 when either has no failure."""
    if a.errors == 0 or b.errors == 0:
        return 1.0

    def shares(v: Verdict) -> dict[str, float]:
        out = {name: count / v.errors for name, count in v.top_wrong_predictions}
        out["\0other"] = 1.0 - sum(out.values())
        return out

    sa, sb = shares(a), shares(b)
    return 0.5 * sum(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb))


def unneeded_parts(h: Hypothesis, verdicts: dict[str, Verdict], alpha: float) -> list[str]:
    """The parts of ``h`` whose removal was tested (the child, in any round) and did not lower
    the failure rate significantly."""
    out = []
    for part in h.parts if len(h.parts) > 1 else []:
        child = h.without(part)
        if child.key in verdicts and h.key in verdicts and not part_needed(verdicts[h.key], verdicts[child.key], alpha):
            out.append(child.removed)
    return out


def merge_bugs(spec: AuditSpec, hypotheses: dict[str, Hypothesis], verdicts: dict[str, Verdict], alpha: float,
               same_failures: float = SAME_FAILURES, same_confusions: float = SAME_CONFUSIONS) -> list[dict]:
    """Verified hypotheses grouped into bugs (union-find), most severe first.

    Two verified hypotheses of one class are one bug when
    - one's parts are a subset of the other's (a bug and its refinement), unless the extra parts
      verified on their own too: then the larger one is the conjunction of two bugs and links
      neither; or
    - the failures they were drawn from overlap (Jaccard >= ``same_failures``): a slice and a
      cluster describing the same rows; or
    - their fresh failing images are confused the same way (total variation distance between
      their wrong predictions <= ``same_confusions``): one failure mode of the class seen under
      several conditions, such as a spurious cue that is missing on brick and missing at night.
    A bug is named by its simplest member (fewest parts, then the higher lower confidence bound);
    the others are its evidence. Severity: that member's ``ci_low - base_error_rate``.
    """
    keys = [k for k, v in verdicts.items() if v.verified]
    parts = {k: frozenset(hypotheses[k].parts) for k in keys}
    verified_tests = {(hypotheses[k].class_name, parts[k]) for k in keys}
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            ha, hb = hypotheses[a], hypotheses[b]
            if ha.class_name != hb.class_name:
                continue
            small, large = (parts[a], parts[b]) if len(parts[a]) <= len(parts[b]) else (parts[b], parts[a])
            refines = small < large and (ha.class_name, large - small) not in verified_tests
            if (refines or _jaccard(ha.failing_rows, hb.failing_rows) >= same_failures
                    or confusion_distance(verdicts[a], verdicts[b]) <= same_confusions):
                parent[find(a)] = find(b)

    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(find(k), []).append(k)
    bugs = []
    for members in groups.values():
        best = min(members, key=lambda k: (len(parts[k]), -verdicts[k].ci_low))
        h, v = hypotheses[best], verdicts[best]
        sources = sorted({s["kind"] for k in members for s in hypotheses[k].sources})
        bugs.append({
            "description": h.description(spec), "class": h.class_name, "prompt": h.prompt_pattern(spec),
            "sources": sources, "hypothesis": best,
            **{name: getattr(v, name) for name in ("n", "errors", "error_rate", "base_error_rate", "ci_low",
                                                   "ci_high", "p_value", "q_value", "top_wrong_predictions")},
            "severity": v.ci_low - v.base_error_rate,
            "evidence": [{"hypothesis": k, "description": hypotheses[k].description(spec),
                          "error_rate": verdicts[k].error_rate, "q_value": verdicts[k].q_value,
                          "sources": [s["kind"] for s in hypotheses[k].sources],
                          "unneeded_parts": unneeded_parts(hypotheses[k], verdicts, alpha)}
                         for k in sorted(members, key=lambda k: -verdicts[k].ci_low)],
            "row_ids": v.row_ids,
        })
    bugs.sort(key=lambda b: -b["severity"])
    return bugs
