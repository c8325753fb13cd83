"""Turning fresh images into verdicts, and verdicts into bugs.

The test of a hypothesis H of class C, on the valid fresh rows of one round:
- null: H's images fail no more often than C's base images (same prompt template, nothing fixed
  but the class; generated afresh for the purpose); for a complement ("square, not grass",
  ``verify.complements``), than the images of its reference ("square, grass"), generated in the
  same round: the claim is that the class depends on that value;
- alternative (one-sided): H's error rate is higher;
- Fisher's exact test, one-sided (``scipy.stats.fisher_exact``), then Benjamini-Hochberg over every
  hypothesis of the round at ``alpha / rounds`` (verify.settings: the rounds share ``alpha``).

Pruning (Wiles et al. 2022): when a verified description loses one part, the child is tested the
same way, and the part is *needed* only if the parent fails significantly more than the child
(one-sided Fisher, parent > child, at the round's level); parts that are not needed are dropped
from the bug's description.

One failure, one bug: verified hypotheses of one class are merged when one refines the other,
or when they look alike (drawn from mostly the same failing rows of the run, or their fresh
failures confused the same way) *and* the fresh images say they are one failure seen twice:
siblings (the same properties, other values), or one whose excess failures lie inside the
other's description (``merge_bugs``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from scipy.stats import fisher_exact

from vbugs_ray.roles.vocabulary import exclusive_group
from vbugs_ray.slices.search import bh_qvalues
from vbugs_ray.slices.stats import clopper_pearson
from vbugs_ray.spec import AuditSpec
from vbugs_ray.verify.hypotheses import Hypothesis
from vbugs_ray.verify.plan import BASE, REF

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
    against: str = "base"  # the arm it was tested against: its class's base, or a complement's reference

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Arm:
    """The valid fresh rows of one arm (a hypothesis or a class's base)."""

    n: int
    errors: int
    row_ids: list
    wrong: Counter
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per valid row
    values: dict = field(default_factory=dict)  # axis -> its value in each valid row (open axes vary)

    @classmethod
    def of(cls, mask: np.ndarray, rows: dict[str, np.ndarray], axes: tuple[str, ...] = ()) -> "Arm":
        valid = mask & rows["valid"]
        err = valid & rows["error"]
        return cls(int(valid.sum()), int(err.sum()), rows["row_id"][valid].tolist(), Counter(rows["pred"][err].tolist()),
                   failed=rows["error"][valid], values={axis: rows[axis][valid] for axis in axes})


def arms_of(rows: dict[str, np.ndarray], axes: tuple[str, ...] = ()) -> dict[str, Arm]:
    """Each arm's valid rows, from the columns of a round's stored rows (``axes``: the axis
    columns to keep, for ``explained_by``)."""
    return {name: Arm.of(rows["hypothesis"] == name, rows, axes) for name in np.unique(rows["hypothesis"])}


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided exact p-value that arm 1 fails more often than arm 2."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
    return min(float(p), 1.0)  # scipy's sum of tail probabilities can exceed 1 by rounding


def against(h: Hypothesis) -> str:
    """The arm ``h`` is tested against: its class's base, or for a complement ("square, not
    grass") its reference ("square, grass"): whether the class fails more without the value."""
    return REF + h.reference.key if h.reference is not None else BASE + h.class_name


def spared_p(values: np.ndarray, failed: np.ndarray, value: str) -> tuple[float, str | None]:
    """p-value that images with ``value`` fail less often than images with *each* other value
    (an intersection-union test: the largest of the one-sided Fisher p-values of every other
    value against it), and the other value that gave it. One bad value does not make the rest
    look spared, as a comparison with all other values pooled would."""
    on = values == value
    k_on, n_on = int(failed[on].sum()), int(on.sum())
    worst, worst_value = 0.0, None
    for other in np.unique(values[~on]):
        at = values == other
        p = fisher_greater(int(failed[at].sum()), int(at.sum()), k_on, n_on)
        if p >= worst:
            worst, worst_value = p, str(other)
    return (worst, worst_value) if worst_value is not None else (1.0, None)


def one_sided_p(h: Hypothesis, arm: Arm, against_arm: Arm) -> float:
    """One-sided: ``h``'s images fail more often than ``against_arm``'s. For a complement, every
    value it draws must (the largest p over its values, ``spared_p`` with the reference's rows
    as the spared value's)."""
    if h.reference is None or not arm.values:
        return fisher_greater(arm.errors, arm.n, against_arm.errors, against_arm.n)
    axis = h.excluded[0][0]
    values = np.concatenate([arm.values[axis], np.full(against_arm.n, "\0reference")])
    failed = np.concatenate([arm.failed, np.ones(against_arm.errors, bool), np.zeros(against_arm.n - against_arm.errors, bool)])
    return spared_p(values, failed, "\0reference")[0]


def judge_round(tests: list[Hypothesis], arms: dict[str, Arm], alpha: float, round_index: int) -> dict[str, Verdict]:
    """Verdicts for one round's hypotheses against their classes' base arms (a complement:
    against its reference arm), BH at ``alpha`` over all of them."""
    # an arm without rows (a dataset holding no held-out image of what it describes) has n = 0: p = 1
    empty = Arm(0, 0, [], Counter())
    p = [one_sided_p(h, arms.get(h.key, empty), arms.get(against(h), empty)) for h in tests]
    q = bh_qvalues(np.asarray(p), len(p))
    verdicts = {}
    for h, p_value, q_value in zip(tests, p, q):
        arm, base = arms.get(h.key, empty), arms.get(against(h), empty)
        low, high = clopper_pearson(np.array([arm.errors]), np.array([arm.n]))
        verdicts[h.key] = Verdict(
            key=h.key, round=round_index, n=arm.n, errors=arm.errors, error_rate=arm.errors / max(arm.n, 1),
            base_n=base.n, base_errors=base.errors, base_error_rate=base.errors / max(base.n, 1),
            ci_low=float(low[0]), ci_high=float(high[0]), p_value=p_value, q_value=float(q_value),
            verified=bool(q_value <= alpha and arm.n > 0),
            top_wrong_predictions=[[name, count] for name, count in arm.wrong.most_common(3)], row_ids=arm.row_ids,
            against="base" if h.reference is None else "reference")
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


def explained_by(outer: Hypothesis, inner: Hypothesis, arms: dict[str, Arm], alpha: float) -> bool | None:
    """Do ``inner``'s excess failures lie inside ``outer``'s description?

    ``inner``'s fresh images, like the class's base images, draw the axes they leave open at
    random, so some of them happen to match ``outer``'s axis predicates. Null: of the images that
    ``outer`` does not describe, ``inner``'s fail no more often than the base's; alternative
    (one-sided): more often. When the null is not rejected (Fisher at ``alpha``), ``inner``
    shows no failure beyond ``outer``'s. Phrases cannot be checked on rows (the images do not
    record them), so only an ``outer`` made of axis predicates alone can be asked: ``None`` when
    the rows cannot tell."""
    arm, base = arms.get(inner.key), arms.get(BASE + inner.class_name)
    if not (outer.predicates or outer.excluded) or outer.phrases or arm is None or base is None \
            or not arm.values or not base.values:
        return None
    inner_rest, base_rest = _not_described(outer, arm), _not_described(outer, base)
    return fisher_greater(int(arm.failed[inner_rest].sum()), int(inner_rest.sum()),
                          int(base.failed[base_rest].sum()), int(base_rest.sum())) > alpha


def _not_described(h: Hypothesis, arm: Arm) -> np.ndarray:
    """The arm's valid rows that ``h``'s axis predicates and exclusions do not all hold for."""
    described = np.ones(arm.n, bool)
    for axis, value in h.predicates:
        described &= arm.values[axis] == value
    for axis, value in h.excluded:
        described &= arm.values[axis] != value
    return ~described


def _slots(groups: dict[str, str], h: Hypothesis) -> frozenset[str]:
    """The properties a description fixes: its axes, and its phrases' groups of exclusive words
    (``groups``: ``exclusive_group(spec)``)."""
    return frozenset([axis for axis, _ in (*h.predicates, *h.excluded)] + [groups.get(p, p) for p in h.phrases])


class _Pairs:
    """What the fresh images say about pairs of verified hypotheses of one class."""

    def __init__(self, spec: AuditSpec, hypotheses: dict[str, Hypothesis], keys: list[str],
                 arms: dict[str, Arm], alpha: float):
        self.hypotheses, self.arms, self.alpha = hypotheses, arms, alpha
        self.parts = {k: frozenset(hypotheses[k].parts) for k in keys}
        groups = exclusive_group(spec)
        self.slots = {k: _slots(groups, hypotheses[k]) for k in keys}
        self.verified_tests = {(hypotheses[k].class_name, self.parts[k]) for k in keys}
        self.inside = {(a, b): explained_by(hypotheses[a], hypotheses[b], arms, alpha)
                       for a in keys for b in keys if a != b and hypotheses[a].class_name == hypotheses[b].class_name}
        # each pair's tests once: the links and every naming of a group read them
        self.covering = {(a, b): self._covers(a, b) for (a, b) in self.inside}

    def refines(self, a: str, b: str) -> bool:
        """One's parts are a subset of the other's and the extra parts did not verify on their own
        (else the larger one is the conjunction of two bugs)."""
        pa, pb = self.parts[a], self.parts[b]
        small, large = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
        return small < large and (self.hypotheses[a].class_name, large - small) not in self.verified_tests

    def siblings(self, a: str, b: str) -> bool:
        """The same properties with other values: a cue missing on brick and missing on sand."""
        return self.slots[a] == self.slots[b]

    def covers(self, a: str, b: str) -> bool:
        return self.covering.get((a, b), False)

    def _covers(self, a: str, b: str) -> bool:
        """``a`` is a complement ("square, not grass", ``verify.complements``) and ``b``'s own
        fresh images spare its value, by positive evidence: ``b`` leaves the axis open, its
        images with the value fail less often than its others (one-sided Fisher at the round's
        level), and no more often than the complement's reference images (not significant).
        A description that fixes the axis ("square, brick") is no evidence either way: it joins
        through the usual rules (siblings, explained, refinements) or stays apart."""
        c, m = self.hypotheses[a], self.hypotheses[b]
        if not c.excluded or m.excluded or c.class_name != m.class_name:
            return False
        axis, value = c.excluded[0]
        arm, ref = self.arms.get(m.key), self.arms.get(REF + c.reference.key)
        if axis in dict(m.predicates) or arm is None or ref is None or axis not in arm.values:
            return False
        on = arm.values[axis] == value
        k_on, n_on, k_off, n_off = int(arm.failed[on].sum()), int(on.sum()), int(arm.failed[~on].sum()), int((~on).sum())
        return (fisher_greater(k_off, n_off, k_on, n_on) <= self.alpha
                and fisher_greater(k_on, n_on, ref.errors, ref.n) > self.alpha)

    def contains(self, a: str, b: str) -> bool:
        """``a`` is a complement and ``b`` describes a subset of its images: ``b`` fixes the
        excluded axis to another value ("square, brick" inside "square, not grass")."""
        c, m = self.hypotheses[a], self.hypotheses[b]
        if not c.excluded or c.class_name != m.class_name:
            return False
        axis, value = c.excluded[0]
        return dict(m.predicates).get(axis, value) != value

    def one_failure_twice(self, a: str, b: str) -> bool:
        """Siblings, or one whose excess failures lie inside the other's description."""
        return self.siblings(a, b) or self.inside[(a, b)] is True or self.inside[(b, a)] is True

    def apart(self, a: str, b: str) -> bool:
        """Two failures by the fresh images: one fails beyond the other's description and neither
        lies inside the other (siblings and refinements excepted). No chain of links joins two
        bugs so named: a star at night and a medium star, both called a cross, stay two bugs."""
        if self.siblings(a, b) or self.refines(a, b) or True in (self.inside[(a, b)], self.inside[(b, a)]):
            return False
        return False in (self.inside[(a, b)], self.inside[(b, a)])


def by_open_axis(h: Hypothesis, arm: Arm | None) -> dict[str, dict[str, list[int]]]:
    """The arm's errors and images per value of each axis ``h`` leaves open ({axis: {value:
    [errors, n]}}): where the bug is heavier or lighter (squares that fail everywhere but on
    grass show ``grass: [0, 31]``), counts only, no test."""
    fixed = {axis for axis, _ in h.predicates}
    out: dict[str, dict[str, list[int]]] = {}
    for axis, values in (arm.values.items() if arm is not None else ()):
        if axis not in fixed:
            out[axis] = {str(v): [int(arm.failed[values == v].sum()), int((values == v).sum())]
                         for v in np.unique(values)}
    return out


def unneeded_parts(h: Hypothesis, verdicts: dict[str, Verdict], alpha: float) -> list[str]:
    """The parts of ``h`` whose removal was tested (the child, in any round) and did not lower
    the failure rate significantly."""
    out = []
    for part in h.parts if len(h.parts) > 1 else []:
        child = h.without(part)
        if child.key in verdicts and h.key in verdicts and not part_needed(verdicts[h.key], verdicts[child.key], alpha):
            out.append(child.removed)
    return out


def merge_bugs(spec: AuditSpec, hypotheses: dict[str, Hypothesis], verdicts: dict[str, Verdict],
               arms: dict[str, Arm], alpha: float, same_failures: float = SAME_FAILURES,
               same_confusions: float = SAME_CONFUSIONS) -> list[dict]:
    """Verified hypotheses grouped into bugs, most severe first.

    Two verified hypotheses of one class are linked when
    - they look alike (below) and one is a complement whose value the other's own fresh images
      spare ("square, not grass" and "square, at night": ``_Pairs.covers``); these links come
      first and join whatever the groups' names, so a mode's members all join its complement
      (which covers them all, and so names the bug) even where the fresh images tell the
      members apart from one another; or
    - one's parts are a subset of the other's (a bug and its refinement), unless the extra parts
      verified on their own too: then the larger one is the conjunction of two bugs; or
    - they look alike, and the fresh images say they are one failure seen twice
      (``_Pairs.one_failure_twice``: siblings, or one explained by the other). Alike: the
      failures they were drawn from overlap (Jaccard >= ``same_failures``: a slice and a cluster
      of the same rows), or their fresh failing images are confused the same way (total
      variation distance between their wrong predictions <= ``same_confusions``).
    The other links join groups, refinements first, unless the fresh images set the two groups'
    names apart (``_Pairs.apart``), so no chain of weak links makes two failures one.
    A bug is named by its simplest member (fewest parts, then the complement that covers or
    contains most other members, then one that no other member explains, then the higher lower
    confidence bound); the others are its evidence. Severity: the largest ``ci_low`` minus the class's base
    rate among its members (how badly its worst verified form fails, ``severity_from``).
    """
    keys = [k for k, v in verdicts.items() if v.verified]
    pairs = _Pairs(spec, hypotheses, keys, arms, alpha)
    members = {k: [k] for k in keys}
    root = {k: k for k in keys}
    links = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            ha, hb = hypotheses[a], hypotheses[b]
            if ha.class_name != hb.class_name:
                continue
            alike = (_jaccard(ha.failing_rows, hb.failing_rows) >= same_failures
                     or confusion_distance(verdicts[a], verdicts[b]) <= same_confusions)
            if alike and (pairs.covers(a, b) or pairs.covers(b, a)):
                links.append((0, a, b))
            elif pairs.refines(a, b):
                links.append((1, a, b))
            elif alike and pairs.one_failure_twice(a, b):
                links.append((2, a, b))

    def name_of(group: list[str]) -> str:
        return min(group, key=lambda k: (len(pairs.parts[k]),
                                         -sum(pairs.covers(k, o) or pairs.contains(k, o) for o in group if o != k),
                                         any(pairs.inside[(o, k)] for o in group if o != k), -verdicts[k].ci_low))

    def severity(k: str) -> float:
        """``ci_low`` above the class's base rate (a complement's too, though it was tested
        against its reference, so that every member is measured from the same point)."""
        base = arms.get(BASE + hypotheses[k].class_name)
        rate = base.errors / base.n if hypotheses[k].excluded and base is not None and base.n else \
            verdicts[k].base_error_rate
        return verdicts[k].ci_low - rate

    for kind, a, b in sorted(links, key=lambda link: link[0]):  # complements' covers, then refinements first
        ra, rb = root[a], root[b]
        if ra == rb or (kind > 0 and pairs.apart(name_of(members[ra]), name_of(members[rb]))):
            continue
        for k in members[rb]:
            root[k] = ra
        members[ra] += members.pop(rb)

    bugs = []
    for group in members.values():
        best, worst = name_of(group), max(group, key=severity)
        h, v = hypotheses[best], verdicts[best]
        sources = sorted({s["kind"] for k in group for s in hypotheses[k].sources})
        bugs.append({
            "description": h.description(spec), "class": h.class_name, "prompt": h.prompt_pattern(spec),
            "sources": sources, "hypothesis": best,
            **{name: getattr(v, name) for name in ("n", "errors", "error_rate", "base_error_rate", "ci_low",
                                                   "ci_high", "p_value", "q_value", "top_wrong_predictions")},
            "severity": severity(worst),
            "severity_from": hypotheses[worst].description(spec),  # its worst verified form
            # base_error_rate is of these images: the class's base, or a complement's reference
            "tested_against": h.reference.description(spec) if h.reference is not None else f"{h.class_name} (base)",
            "evidence": [{"hypothesis": k, "description": hypotheses[k].description(spec),
                          "error_rate": verdicts[k].error_rate, "q_value": verdicts[k].q_value,
                          "sources": [s["kind"] for s in hypotheses[k].sources],
                          "unneeded_parts": unneeded_parts(hypotheses[k], verdicts, alpha)}
                         for k in sorted(group, key=lambda k: -verdicts[k].ci_low)],
            "by_open_axis": by_open_axis(h, arms.get(best)),
            "row_ids": v.row_ids,
        })
    bugs.sort(key=lambda b: -b["severity"])
    _number_modes(bugs, verdicts, same_confusions)
    return bugs


def modes(keys: list[str], class_of: Callable[[str], str], distance: Callable[[str, str], float],
          same: float = SAME_CONFUSIONS) -> list[list[str]]:
    """``keys`` grouped greedily, in order: each joins the first group of its class whose every
    member is within ``same`` of it (complete linkage, so no chain joins two unlike ones)."""
    groups: list[list[str]] = []
    for key in keys:
        home = next((g for g in groups if class_of(g[0]) == class_of(key)
                     and all(distance(o, key) <= same for o in g)), None)
        if home is None:
            groups.append(home := [])
        home.append(key)
    return groups


def _number_modes(bugs: list[dict], verdicts: dict[str, Verdict], same_confusions: float) -> None:
    """``mode`` on each bug (1 = the most severe bug's): bugs of one class whose failures are all
    confused alike, pairwise. Distinct failures by the fresh images, perhaps one mechanism: the
    demo's squares fail at night, small and on brick, each called a circle, and each fails
    everywhere but on grass (``verify.complements`` then tests "square, not on grass")."""
    by_key = {b["hypothesis"]: b for b in bugs}
    groups = modes(list(by_key), lambda k: by_key[k]["class"],
                   lambda a, b: confusion_distance(verdicts[a], verdicts[b]), same_confusions)
    for number, group in enumerate(groups, 1):
        for key in group:
            by_key[key]["mode"] = number
