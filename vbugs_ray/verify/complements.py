"""One failure that several descriptions each name: a class that fails everywhere but where a cue is.

A classifier that learned "grass means square" fails on squares wherever there is no grass; a
round then verifies "square, at night", "square, small", "square, on brick": true descriptions,
each a slice of one failure, and each confused the same way. Their fresh images say what they
share: on grass, where each leaves the background open, none of them fails.

So, after a round, for each class whose verified hypotheses form one *mode* (two or more, their
fresh failures confused alike pairwise), the axis value that is safe for all of them is found on
their pooled fresh images: over the axes some member leaves open, the value ``v`` of axis ``a``
with the smallest p-value that images with ``v`` fail less often than images with *each* other
value (an intersection-union test: the largest of the one-sided Fisher p-values, one per other
value; one bad value, brick, does not make an arbitrary other value look spared). When that
p-value is at most the round's level divided by the number of values looked at (Bonferroni: with
no spared value, a mode proposes nothing in all but ``alpha`` of worlds), the complement "the
class, not ``v``" (images drawn with ``a`` over its other values) is proposed for the next round.
There it is tested on fresh images against its *reference* arm, "the class, ``v``", generated in
the same round: null, some other value's images fail no more often than the reference's; the
same intersection-union form, one-sided Fisher per value, in the round's BH family. The claim is
a dependence on a cue, which a comparison with the class's base, itself mostly without ``v``,
would barely see. The choice of ``v`` is made on one round's images and tested on the next's, so
the selection does not bias the test. ``merge_bugs`` then joins the complement with each member
whose own images spare ``v`` (``verdicts._Pairs.covers``), and names their bug by it.
"""

from __future__ import annotations

import numpy as np

from vbugs_ray.verify.hypotheses import Hypothesis
from vbugs_ray.verify.verdicts import Arm, Verdict, confusion_distance, modes, spared_p

KIND = "complement"
MIN_MEMBERS = 2


def safe_value(members: list[Hypothesis], arms: dict[str, Arm]
               ) -> tuple[str, str, float, list[int], list[int], int] | None:
    """(axis, value, p, [errors, n] with it, [errors, n] without it, values looked at) of the
    value the members' pooled fresh images fail least on against every other value
    (``spared_p``). Per axis, only the members that leave it open are pooled (their images draw
    its values alike, so pooling mixes no member's rate into one value's); a value that some
    member fixes is not spared."""
    if any(h.key not in arms or not arms[h.key].values for h in members):
        return None
    best, looked = None, 0
    for axis in arms[members[0].key].values:
        fixed = {dict(h.predicates)[axis] for h in members if axis in dict(h.predicates)}
        varied = [arms[h.key] for h in members if axis not in dict(h.predicates)]
        if not varied:
            continue
        values = np.concatenate([arm.values[axis] for arm in varied])
        failed = np.concatenate([arm.failed for arm in varied])
        for value in np.unique(values):
            if value in fixed:
                continue  # a member fails with it: not spared
            looked += 1
            p, _ = spared_p(values, failed, value)
            if best is None or p < best[2]:
                on = values == value
                best = (axis, str(value), p, [int(failed[on].sum()), int(on.sum())],
                        [int(failed[~on].sum()), int((~on).sum())])
    return None if best is None else (*best, looked)


def propose(hypotheses: dict[str, Hypothesis], verdicts: dict[str, Verdict], arms: dict[str, Arm],
            alpha: float, tested: set[str]) -> list[Hypothesis]:
    """Complement hypotheses for the modes of the verified ones (see the module's docstring),
    one per mode at most, none already ``tested``."""
    verified = [k for k, v in verdicts.items() if v.verified and not hypotheses[k].excluded]
    out = []
    for group in modes(verified, lambda k: hypotheses[k].class_name,
                       lambda a, b: confusion_distance(verdicts[a], verdicts[b])):
        members = [hypotheses[k] for k in group]
        if len(members) < MIN_MEMBERS:
            continue
        found = safe_value(members, arms)
        if found is None or found[2] > alpha / found[5]:
            continue
        axis, value, p, on, off, looked = found
        rows = tuple(sorted({r for h in members for r in h.failing_rows}))
        h = Hypothesis(members[0].class_name, (), excluded=((axis, value),), failing_rows=rows,
                       prior=max(m.prior for m in members),
                       sources=({"kind": KIND, "members": group, "axis": axis, "value": value,
                                 "errors_with": on, "errors_without": off, "p_value": p, "values_looked_at": looked},))
        if h.key not in tested:
            out.append(h)
    return out
