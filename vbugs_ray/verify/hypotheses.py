"""A hypothesis: "images of class C that also show D fail more often than images of C".

D is made of *parts*: axis predicates (``lighting=night``: the spec's prompt says it with the
axis's own words), exclusions (``background!=grass``: every value of the axis but that one, for a
failure everywhere but where a cue is, see ``verify.complements``) and free phrases (``heavy
clutter``, a caption) that the prompt appends. Fresh
images for a hypothesis come from the spec's own prompt template with the class and the
predicates fixed and every other axis drawn at random, plus the phrases; the *base* images of a
class are the same with nothing fixed but the class. So the base is the audit's own distribution
of that class, and the only difference between the two arms is the description under test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vbugs_ray.cache import key_of
from vbugs_ray.roles.vocabulary import axis_of_phrase, exclusive_group
from vbugs_ray.spec import AuditSpec

Part = tuple[str, str]  # ("lighting", "night"): axis predicate; ("!background", "grass"): exclusion; ("", "x"): phrase
NOT = "!"  # marks an exclusion's axis in a part


@dataclass(frozen=True)
class Hypothesis:
    class_name: str
    predicates: tuple[tuple[str, str], ...]  # (axis, value), in the spec's axis order
    phrases: tuple[str, ...] = ()
    sources: tuple[dict, ...] = ()  # where it came from, each with that source's statistics
    failing_rows: tuple[int, ...] = ()  # run-store row ids of the failures it covers (for merging)
    prior: float = 0.0  # higher is tested first
    parent: str | None = None  # key of the hypothesis this one is a part of (pruning)
    removed: str | None = None  # the part the parent had and this one lacks
    excluded: tuple[tuple[str, str], ...] = ()  # (axis, value) its images never show

    @property
    def key(self) -> str:
        """Stable id of what is tested (class + parts), whatever the sources."""
        what = [self.class_name, sorted(self.predicates), sorted(self.phrases)]
        return "h" + key_of(what + ([sorted(self.excluded)] if self.excluded else []))[:10]

    @property
    def parts(self) -> list[Part]:
        return [*self.predicates, *((NOT + a, v) for a, v in self.excluded), *(("", p) for p in self.phrases)]

    def without(self, part: Part) -> "Hypothesis":
        """The hypothesis with one part dropped (a child tested when pruning the description)."""
        axis, value = part
        return replace(self, predicates=tuple(p for p in self.predicates if p != part),
                       excluded=tuple(p for p in self.excluded if (NOT + p[0], p[1]) != part),
                       phrases=tuple(p for p in self.phrases if axis or p != value), sources=(),
                       prior=self.prior, parent=self.key, removed=part_text(part))

    @property
    def reference(self) -> "Hypothesis | None":
        """What a complement is tested against: the same description with its excluded values
        shown ("square, grass" for "square, not grass"); None for any other hypothesis, which is
        tested against its class's base."""
        if not self.excluded:
            return None
        order = {axis: i for i, axis in enumerate(dict(self.predicates) | dict(self.excluded))}
        shown = tuple(sorted((*self.predicates, *self.excluded), key=lambda p: order[p[0]]))
        return Hypothesis(self.class_name, shown, self.phrases)

    def merged_with(self, other: "Hypothesis") -> "Hypothesis":
        """The same test reached from another source: keep both sources and all covered failures."""
        rows = tuple(sorted(set(self.failing_rows) | set(other.failing_rows)))
        return replace(self, sources=self.sources + other.sources, failing_rows=rows,
                       prior=max(self.prior, other.prior))

    def description(self, spec: AuditSpec) -> str:
        phrases = dict(zip(spec.classes, spec.class_phrases))
        words = {a.name: dict(zip(a.values, a.phrases)) for a in spec.axes}
        parts = [phrases[self.class_name], *(words[a][v] for a, v in self.predicates),
                 *("not " + words[a][v] for a, v in self.excluded), *self.phrases]
        return ", ".join(parts)

    def prompt_pattern(self, spec: AuditSpec) -> str:
        """The prompt its images are drawn from: open axes stay as {placeholders}, an axis with
        a value excluded as {axis, not value}."""
        values = _fixed_phrases(spec, self.class_name, dict(self.predicates))
        for axis, value in self.excluded:
            values[axis] = "{" + f"{axis}, not {value}" + "}"
        return spec.prompt.format_map(_Keep(values)) + "".join(", " + p for p in self.phrases)

    def prompts(self, spec: AuditSpec, rng: np.random.Generator, n: int) -> tuple[list[str], dict[str, list[str]]]:
        """``n`` prompts, open axes drawn uniformly; also the axis values each prompt holds."""
        return draw_prompts(spec, self.class_name, dict(self.predicates), self.phrases, rng, n, self.excluded)

    def to_dict(self, spec: AuditSpec) -> dict:
        return {"key": self.key, "class": self.class_name, "description": self.description(spec),
                "predicates": dict(self.predicates), "phrases": list(self.phrases),
                "excluded": dict(self.excluded), "prompt": self.prompt_pattern(spec), "sources": list(self.sources),
                "failing_rows": len(self.failing_rows), "parent": self.parent, "removed": self.removed}

    def state(self) -> dict:
        """Everything needed to rebuild it (the plan of a run is stored as JSON)."""
        return {"class_name": self.class_name, "predicates": [list(p) for p in self.predicates],
                "phrases": list(self.phrases), "sources": list(self.sources),
                "failing_rows": list(self.failing_rows), "prior": self.prior, "parent": self.parent,
                "removed": self.removed, "excluded": [list(p) for p in self.excluded]}

    @classmethod
    def from_state(cls, data: dict) -> "Hypothesis":
        return cls(class_name=data["class_name"], predicates=tuple(tuple(p) for p in data["predicates"]),
                   phrases=tuple(data["phrases"]), sources=tuple(data["sources"]),
                   failing_rows=tuple(data["failing_rows"]), prior=data["prior"], parent=data["parent"],
                   removed=data["removed"], excluded=tuple(tuple(p) for p in data.get("excluded", [])))


def part_text(part: Part) -> str:
    axis, value = part
    if axis.startswith(NOT):
        return f"{axis[len(NOT):]}!={value}"
    return f"{axis}={value}" if axis else value


class _Keep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fixed_phrases(spec: AuditSpec, class_name: str, predicates: dict[str, str]) -> dict[str, str]:
    values = {"class": dict(zip(spec.classes, spec.class_phrases))[class_name]}
    for axis in spec.axes:
        if axis.name in predicates:
            values[axis.name] = dict(zip(axis.values, axis.phrases))[predicates[axis.name]]
    return values


def draw_prompts(spec: AuditSpec, class_name: str, predicates: dict[str, str], phrases: tuple[str, ...],
                 rng: np.random.Generator, n: int, excluded: tuple[tuple[str, str], ...] = ()
                 ) -> tuple[list[str], dict[str, list[str]]]:
    """The spec's template for one class with ``predicates`` fixed, other axes drawn at random
    (uniformly over the values not ``excluded``)."""
    columns: dict[str, list[str]] = {}
    for axis in spec.axes:
        if axis.name in predicates:
            idx = np.full(n, axis.values.index(predicates[axis.name]))
        elif any(a == axis.name for a, _ in excluded):
            allowed = [i for i, v in enumerate(axis.values) if (axis.name, v) not in excluded]
            idx = np.asarray(allowed)[rng.integers(0, len(allowed), n)]
        else:
            idx = rng.integers(0, len(axis.values), n)
        columns[axis.name] = [axis.values[i] for i in idx]
    return prompts_of(spec, class_name, columns, n, phrases), columns


def prompts_of(spec: AuditSpec, class_name: str, columns: dict[str, list[str]], n: int,
               phrases: tuple[str, ...] = ()) -> list[str]:
    """The spec's prompt for ``n`` rows of a class with these axis values (each value in its
    axis's words), the phrases appended."""
    words = {a.name: dict(zip(a.values, a.phrases)) for a in spec.axes}
    class_words = dict(zip(spec.classes, spec.class_phrases))[class_name]
    tail = "".join(", " + p for p in phrases)
    return [spec.prompt.format(**{"class": class_words, **{a: words[a][v[i]] for a, v in columns.items()}}) + tail
            for i in range(n)]


def split_phrases(spec: AuditSpec, phrases: list[str]) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Caption phrases (best first) as hypothesis parts: an axis value's words become its
    predicate, class names are dropped (the class is fixed), anything else stays a phrase. Of
    mutually exclusive phrases (one axis, one group of the generator's words) the first wins:
    an image has one background, one size."""
    by_phrase, group_of = axis_of_phrase(spec), exclusive_group(spec)
    class_words = set(spec.classes) | set(spec.class_phrases)
    predicates: dict[str, str] = {}
    free: list[str] = []
    taken: set[str] = set()
    for phrase in phrases:
        group = group_of.get(phrase)
        if phrase in class_words or phrase in free or (group is not None and group in taken):
            continue
        if group is not None:
            taken.add(group)
        if phrase in by_phrase:
            predicates[by_phrase[phrase][0]] = by_phrase[phrase][1]
        else:
            free.append(phrase)
    order = [a.name for a in spec.axes]
    return tuple(sorted(predicates.items(), key=lambda p: order.index(p[0]))), tuple(free)


def deduplicate(hypotheses: list[Hypothesis]) -> list[Hypothesis]:
    """One hypothesis per test (class + parts), sources merged, highest prior first."""
    by_key: dict[str, Hypothesis] = {}
    for h in hypotheses:
        by_key[h.key] = by_key[h.key].merged_with(h) if h.key in by_key else h
    return sorted(by_key.values(), key=lambda h: -h.prior)
