"""A classifier's output names and which outputs count as each of the spec's classes.

Real classifiers predict over their own label set (ImageNet's 1,000 synsets...), not over the
spec's classes. ``ClassMap`` says which outputs are a correct answer for each spec class: one
output (``goldfish -> 1``), or a set of them for a superclass (``dog -> 151..268``), so that
p(true class) is the probability mass on the set and an error is a top-1 outside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vbugs_ray.errors import SpecError, quote


def imagenet_names() -> list[str]:
    """ImageNet-1k class descriptions as bundled with timm ("tench, Tinca tinca", ...): no download."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def label_names(source: Any, field: str) -> list[str] | None:
    """Output names from ``labels``: 'imagenet', a list, a .txt file (one name per line) or a
    .json file (a list, or index -> name). None when not given."""
    if source is None:
        return None
    if source == "imagenet":
        return imagenet_names()
    if isinstance(source, list) and source and all(isinstance(v, str) for v in source):
        return list(source)
    if not isinstance(source, str):
        raise SpecError(field, "expected 'imagenet', a list of names, or a path to a .txt / .json label file")
    path = Path(source).expanduser()
    if not path.is_file():
        raise SpecError(field, f"no label file at {path}; give 'imagenet', a list, or a .txt / .json file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = [data[k] for k in sorted(data, key=int)]
            if not isinstance(data, list):
                raise ValueError("not a list")
            return [str(v) for v in data]
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(field, f"cannot read label file {path} ({exc}); expected one name per line or JSON") from None


def _lookup(name: str, output_names: Sequence[str]) -> list[int]:
    """Outputs named ``name`` (case-insensitive); failing that, outputs with ``name`` among their
    comma-separated synonyms ("tench, Tinca tinca")."""
    key = name.strip().lower().replace("_", " ")
    exact = [i for i, out in enumerate(output_names) if out.lower() == key]
    return exact or [i for i, out in enumerate(output_names)
                     if key in (s.strip().lower() for s in out.split(","))]


class ClassMap:
    """Spec class index -> set of model output indices (disjoint across classes)."""

    def __init__(self, classes: Sequence[str], output_names: Sequence[str], index_sets: Sequence[Sequence[int]]):
        self.classes = list(classes)
        self.output_names = np.asarray(list(output_names), dtype=object)
        self.member = np.zeros((len(classes), len(output_names)), bool)
        for c, indices in enumerate(index_sets):
            self.member[c, list(indices)] = True
        # the spec class an output belongs to (-1: none of the spec's classes)
        self.class_of_output = np.where(self.member.any(axis=0), self.member.argmax(axis=0), -1)

    def p_true(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return (probs * self.member[labels]).sum(axis=1)

    def is_error(self, top1: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return ~self.member[labels, top1]


def build_class_map(classes: Sequence[str], output_names: Sequence[str], mapping: Any,
                    field: str = "classifier.options.class_map") -> ClassMap:
    """``mapping``: None (each class found by name among the outputs) or a dict class -> index,
    name, or list of them (a superclass). Classes a dict leaves out are found by name."""
    if mapping is not None and not isinstance(mapping, dict):
        raise SpecError(field, "expected a mapping class -> output index, output name, or list of them")
    unknown = sorted(set(mapping or {}) - set(classes))
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", f"not one of the spec's classes ({', '.join(classes)})")
    n_out = len(output_names)
    sets: list[list[int]] = []
    for cls in classes:
        where = f"{field}.{cls}"
        wanted = (mapping or {}).get(cls, cls)
        items = wanted if isinstance(wanted, list) else [wanted]
        indices: list[int] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise SpecError(where, f"expected an output index or name; got {quote(item)}")
            if isinstance(item, int):
                if not 0 <= item < n_out:
                    raise SpecError(where, f"output index {item} out of range; the model has {n_out} outputs")
                indices.append(item)
                continue
            hits = _lookup(item, output_names)
            if not hits:
                raise SpecError(where, f"no model output is named {quote(item)}; map the class to an output index, "
                                f"a list of indices, or a name from the label list")
            if len(hits) > 1:
                shown = ", ".join(f"{i} ({output_names[i]})" for i in hits[:4])
                raise SpecError(where, f"{quote(item)} names several outputs ({shown}); map the class to indices")
            indices.extend(hits)
        sets.append(sorted(set(indices)))
    seen: dict[int, str] = {}
    for cls, indices in zip(classes, sets):
        for i in indices:
            if i in seen:
                raise SpecError(f"{field}.{cls}", f"output {i} ({output_names[i]}) is also mapped to {seen[i]}; "
                                f"each output may count for one class only")
            seen[i] = cls
    return ClassMap(classes, output_names, sets)
