"""The fresh rows of one verification round: for each hypothesis under test, each complement's
reference arm and each class's base arm, ``n`` prompts with seeds that no earlier row of the run
has used.

A generator that reads a dataset shows held-out images instead (``held_out_reader``): each row
names its image (``source``), and an arm has at most as many rows as the dataset holds images of
what it describes. A round's rows have the grid's columns (so they run through the same stages) plus
``hypothesis`` (the key tested, or ``base:<class>``) and ``arm`` (``hypothesis`` / ``reference`` /
``base``);
row ids continue after the run's last one. Everything is a function of the spec, the tests and
the seeds already used, so a re-run plans the same rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from vbugs_ray.grid import row_seeds
from vbugs_ray.spec import AuditSpec
from vbugs_ray.verify.hypotheses import Hypothesis, draw_prompts, prompts_of

BASE = "base:"
REF = "ref:"  # a complement's reference arm: its own rows, never another test's
_SALT = 0x5EED_F4E5  # keeps verification seed streams apart from the grid's (cell, replicate) ones


def _stream(name: str) -> int:
    """A 62-bit stream number for a hypothesis key or a base arm (stable across processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 2


def fresh_seeds(spec_seed: int, name: str, n: int, used: set[int]) -> np.ndarray:
    """``n`` seeds for ``name``'s images, none in ``used`` (which then holds them too)."""
    out: list[int] = []
    start = 0
    while len(out) < n:
        block = row_seeds(spec_seed ^ _SALT, np.full(2 * n, _stream(name), np.uint64),
                          np.arange(start, start + 2 * n, dtype=np.int64))
        for seed in block.tolist():
            if seed not in used:
                used.add(seed)
                out.append(seed)
                if len(out) == n:
                    break
        start += 2 * n
    return np.asarray(out, np.int64)


def held_out_reader(spec: AuditSpec):
    """For a generator that reads a dataset, ``(class, predicates, excluded, n, rng) -> columns``
    of held-out images (its ``held_out_rows``); None for one that draws."""
    from vbugs_ray.roles import registry

    cls = registry.backend_class("generator", spec.generator.backend)
    if not hasattr(cls, "held_out_rows"):
        return None
    options = registry.options_of("generator", spec.generator)
    return lambda class_name, predicates, excluded, n, rng: cls.held_out_rows(
        options, spec, class_name, predicates, tuple(excluded), n, rng)


def plan_round(spec: AuditSpec, tests: list[Hypothesis], base_classes: list[str], n: int, first_row_id: int,
               used_seeds: set[int], round_index: int, phrase_rows=None) -> pa.Table:
    """The round's rows: ``n`` per hypothesis in ``tests`` and per class in ``base_classes``.
    On a dataset, an arm with free phrases is ``phrase_rows(hypothesis, n)``: held-out images
    found by the embedder (``verify.retrieval``), with the seeds they were embedded under."""
    arms = [(h.key, "hypothesis", h) for h in tests]
    refs = {h.reference.key: h.reference for h in tests if h.reference is not None}
    arms += [(REF + key, "reference", ref) for key, ref in refs.items()]
    arms += [(BASE + c, "base", Hypothesis(c, ())) for c in base_classes]
    reader = held_out_reader(spec)
    columns: dict[str, list] = {name: [] for name in ("cell", "replicate", "class", "label", *spec.axis_names,
                                                      "prompt", "seed", "hypothesis", "arm",
                                                      *(("source",) if reader else ()))}
    for name, arm, h in arms:
        class_name, predicates, phrases, excluded = h.class_name, dict(h.predicates), h.phrases, h.excluded
        rng = np.random.default_rng([spec.seed, round_index, _stream(name)])
        seeds = None
        if reader:  # held-out images that show the arm's description (perhaps fewer than n)
            if phrases:  # the seeds the pool's images were embedded under (already used)
                values = phrase_rows(h, n)
                seeds = values["seed"]
            else:
                values = reader(class_name, predicates, excluded, n, rng)
            k = len(values["source"])
            prompts = prompts_of(spec, class_name, {a: values[a] for a in spec.axis_names}, k, phrases)
            columns["source"] += values["source"]
        else:
            k = n
            prompts, values = draw_prompts(spec, class_name, predicates, phrases, rng, n, excluded)
        columns["cell"] += [-1] * k
        columns["replicate"] += list(range(k))
        columns["class"] += [class_name] * k
        columns["label"] += [spec.classes.index(class_name)] * k
        for axis in spec.axis_names:
            columns[axis] += values[axis]
        columns["prompt"] += prompts
        columns["seed"] += seeds if seeds is not None else fresh_seeds(spec.seed, f"{round_index}:{name}", k,
                                                                       used_seeds).tolist()
        columns["hypothesis"] += [name] * k
        columns["arm"] += [arm] * k
    return rows_table(columns, first_row_id)


INT_COLUMNS = ("cell", "replicate", "label", "seed", "pair_of")  # a planned row's integer columns; the rest text


def rows_table(columns: dict[str, list], first_row_id: int) -> pa.Table:
    """Planned rows as the pipeline takes them: row ids from ``first_row_id``, then ``columns``."""
    n = len(columns["prompt"])
    table = {"row_id": pa.array(np.arange(first_row_id, first_row_id + n, dtype=np.int64))}
    for name, values in columns.items():
        table[name] = pa.array(values, pa.int64() if name in INT_COLUMNS else pa.string())
    return pa.table(table)
