"""Counterfactual pairs of verified bugs: the same image with its description changed.

For each verified bug, up to ``PAIRS`` of the failing images it was verified on are made again
with the same seed and everything else equal, once per *change*: each axis value the bug fixes
swapped for each other value of that axis ("lighting: night -> day"), a value a complement
excludes shown ("background: not grass -> grass" for "square, not grass"), and, when the generator
draws, its free phrases dropped. A change *fixes* a pair when the counterpart is classified
correctly; the share of pairs each change fixes says what flips the prediction (the design's
same-seed axis swaps; LDCE's guided edits are not here).

A generator that reads a dataset can change only what it makes itself: ``corruptions`` redraws
the same image under another corruption or severity; ``dataset`` images cannot be changed, so
its bugs get none. The pairs are descriptive evidence beside the bug's test, not a second test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vbugs_ray.spec import AuditSpec
from vbugs_ray.verify.hypotheses import Hypothesis, prompts_of
from vbugs_ray.verify.plan import rows_table

PAIRS = 12  # failing images per bug made again
MAX_BUGS = 10  # the most severe bugs get pairs
ARM = "counterfactual"


@dataclass(frozen=True)
class Change:
    label: str  # "lighting: night -> day", "without heavy clutter"
    values: dict  # axis -> value set on the image (the others kept)
    drop_phrases: bool = False


def changes(spec: AuditSpec, h: Hypothesis, row_values: dict[str, str], draws: bool) -> list[Change]:
    """The changes of one failing image of ``h`` (``row_values``: its axis values)."""
    axes = {a.name: a for a in spec.axes}
    out = [Change(f"{axis}: {value} -> {other}", {axis: other})
           for axis, value in h.predicates for other in axes[axis].values if other != value]
    out += [Change(f"{axis}: not {value} -> {value}", {axis: value}) for axis, value in h.excluded]
    if draws and h.phrases:
        out.append(Change("without " + ", ".join(h.phrases), {}, drop_phrases=True))
    return out


def plan(spec: AuditSpec, bugs: list[dict], hypotheses: dict[str, Hypothesis], rows: dict[str, np.ndarray],
         first_row_id: int, draws: bool) -> pa.Table:
    """The pairs' counterparts: per bug (the first MAX_BUGS), its first PAIRS failing valid rows
    (by row id) under each change. ``rows``: the verification rows' columns (row_id, seed,
    error, valid, class, the axes, and source for a dataset)."""
    columns: dict[str, list] = {name: [] for name in ("cell", "replicate", "class", "label", *spec.axis_names,
                                                      "prompt", "seed", "hypothesis", "arm", "pair_of", "change",
                                                      *(("source",) if "source" in rows else ()))}
    by_id = {int(r): i for i, r in enumerate(rows["row_id"])}
    for bug in bugs[:MAX_BUGS]:
        h = hypotheses[bug["hypothesis"]]
        failing = sorted(int(r) for r in bug.get("row_ids", []) if int(r) in by_id
                         and rows["error"][by_id[int(r)]] and rows["valid"][by_id[int(r)]])[:PAIRS]
        for row_id in failing:
            i = by_id[row_id]
            values = {a: str(rows[a][i]) for a in spec.axis_names}
            for change in changes(spec, h, values, draws):
                changed = {**values, **change.values}
                phrases = () if change.drop_phrases else h.phrases
                columns["replicate"].append(len(columns["cell"]))
                columns["cell"].append(-1)
                columns["class"].append(h.class_name)
                columns["label"].append(spec.classes.index(h.class_name))
                for axis in spec.axis_names:
                    columns[axis].append(changed[axis])
                columns["prompt"] += prompts_of(spec, h.class_name, {a: [v] for a, v in changed.items()}, 1, phrases)
                columns["seed"].append(int(rows["seed"][i]))  # the same seed: the same image but for the change
                columns["hypothesis"].append(h.key)
                columns["arm"].append(ARM)
                columns["pair_of"].append(row_id)
                columns["change"].append(change.label)
                if "source" in columns:
                    columns["source"].append(str(rows["source"][i]))
    return rows_table(columns, first_row_id)


def summarise(bugs: list[dict], planned: pa.Table, made: dict[str, np.ndarray]) -> None:
    """Adds ``counterfactuals`` to each bug that has pairs: per change, the valid pairs, how many
    the change fixed, and the pairs (failing row id, counterpart row id), most fixing first."""
    ok = {int(r): (bool(v), bool(e)) for r, v, e in zip(made["row_id"], made["valid"], made["error"])}
    key = {b["hypothesis"]: b for b in bugs}
    found: dict[str, dict[str, dict]] = {}
    for row in planned.select(["row_id", "hypothesis", "pair_of", "change"]).to_pylist():
        valid, error = ok.get(row["row_id"], (False, True))
        if not valid:
            continue
        item = found.setdefault(row["hypothesis"], {}).setdefault(row["change"], {"change": row["change"], "n": 0,
                                                                                 "fixed": 0, "pairs": []})
        item["n"] += 1
        item["fixed"] += int(not error)
        item["pairs"].append([row["pair_of"], row["row_id"]])
    for hypothesis, by_change in found.items():
        if hypothesis in key:
            key[hypothesis]["counterfactuals"] = sorted(by_change.values(), key=lambda c: (-c["fixed"] / c["n"], c["change"]))
