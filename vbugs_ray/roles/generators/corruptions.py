"""Generator backend ``corruptions``: a dataset's images under parametric corruptions.

Options: ``source`` and ``held_out`` as for ``dataset``. The spec's axes are ``corruption``
(names from vbugs_ray.datasets.corruptions: gaussian_blur, gaussian_noise, brightness, contrast,
rotation, jpeg, occlusion; each value's words are its prompt phrase) and ``severity`` (1 to 5).
Each grid row's image is the ``replicate``-th audited image of its class (so every corruption
and severity is applied to the same images: a paired design), corrupted deterministically by its
seed. A flagged (class, corruption, severity) is verified by corrupting held-out images of the class.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vbugs_ray.datasets import rows as datarows
from vbugs_ray.datasets.corruptions import NAMES, SEVERITIES, corrupt
from vbugs_ray.errors import SpecError, quote
from vbugs_ray.grid import build_grid
from vbugs_ray.datasets.rows import DATA_ERROR
from vbugs_ray.roles.generators._reading import ReadingGenerator, spec_items

AXES = ("corruption", "severity")
GROUP = 3  # training pairs per image for the embedder: the same picture under different corruptions


def _training_images(options, spec) -> tuple[np.ndarray, np.ndarray]:
    """(images, label indexes) to train on: the source's train split, else its audited share."""
    from vbugs_ray.datasets.sources import has_splits, labelled_images, open_source

    if has_splits(options.source):
        return labelled_images(options.source, "train", spec.classes)
    audit, _, keys = _pools(options, spec)
    index = np.concatenate([audit[c] for c in spec.classes])
    labels = np.concatenate([np.full(len(audit[c]), i) for i, c in enumerate(spec.classes)])
    read = open_source(options.source).read([str(k) for k in keys[index]])
    ok = [j for j, im in enumerate(read) if not isinstance(im, str)]
    return np.stack([read[j] for j in ok]), labels[ok]


def _pools(options, spec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Per class, the items it audits and the items it holds out (indexes), and every item's key."""
    table = spec_items(options, spec)
    classes = np.asarray(table.column("class").to_pylist(), dtype=object)
    usable = np.asarray(table.column(DATA_ERROR).to_pylist(), dtype=object) == ""
    held = table.column("held_out").to_numpy(zero_copy_only=False)
    audit = {c: np.flatnonzero(usable & ~held & (classes == c)) for c in spec.classes}
    kept = {c: np.flatnonzero(usable & held & (classes == c)) for c in spec.classes}
    return audit, kept, np.asarray(table.column("source").to_pylist(), dtype=object)


class CorruptionsGenerator(ReadingGenerator):
    @classmethod
    def check(cls, options, spec) -> None:
        super().check(options, spec)
        if sorted(spec.axis_names) != sorted(AXES):
            raise SpecError("axes", f"the corruptions generator's axes are corruption and severity; got "
                                    f"{', '.join(spec.axis_names) or 'none'}")
        axes = {a.name: a for a in spec.axes}
        for value in axes["corruption"].values:
            if value not in NAMES:
                raise SpecError("axes.corruption", f"unknown corruption {quote(value)}; known: {', '.join(NAMES)}")
        for value in axes["severity"].values:
            if value not in SEVERITIES:
                raise SpecError("axes.severity", f"severities are 1 to {len(SEVERITIES)}; got {quote(value)}")

    @classmethod
    def grid(cls, options, spec) -> pa.Table:
        """The spec's grid; each row's image is its class's ``replicate``-th audited image (cycling
        when a cell asks for more images than the class has)."""
        grid = build_grid(spec)
        audit, _, keys = _pools(options, spec)
        classes = grid.column("class").to_pylist()
        replicate = grid.column("replicate").to_numpy()
        source, errors = [], []
        for c, r in zip(classes, replicate):
            pool = audit[c]
            source.append(str(keys[pool[r % len(pool)]]) if len(pool) else "")
            errors.append("" if len(pool) else f"{datarows.NO_IMAGE}: the source has no audited image of {c!r}")
        return grid.append_column("source", pa.array(source, pa.string())).append_column(
            DATA_ERROR, pa.array(errors, pa.string()))

    @classmethod
    def held_out_rows(cls, options, spec, class_name: str, predicates: dict, excluded: tuple, n: int,
                      rng: np.random.Generator) -> dict[str, list]:
        """Up to ``n`` held-out images of the class, each with the predicates' corruption and
        severity, the others drawn uniformly from the values not ``excluded``."""
        _, kept, keys = _pools(options, spec)
        chosen = datarows.draw_held_out(kept[class_name], n, rng)
        out: dict[str, list] = {"source": keys[chosen].tolist()}
        for axis in spec.axes:
            if axis.name in predicates:
                out[axis.name] = [predicates[axis.name]] * len(chosen)
                continue
            allowed = [v for v in axis.values if (axis.name, v) not in excluded]
            out[axis.name] = [allowed[i] for i in rng.integers(0, len(allowed), len(chosen))]
        return out

    @classmethod
    def training_pool(cls, options, spec, n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """About ``n`` (image, caption) pairs for an embedder to learn the spec's words: training
        images (the source's train split, else the audited share), each under GROUP different
        (corruption, severity) pairs, captioned by the spec's prompt."""
        images, labels = _training_images(options, spec)
        rng = np.random.default_rng([seed, 5150])
        axes = {a.name: a for a in spec.axes}
        words = dict(zip(spec.classes, spec.class_phrases))
        combos = [(c, s) for c in axes["corruption"].values for s in axes["severity"].values]
        group = min(GROUP, len(combos))
        out, captions, groups = [], [], []
        for g, i in enumerate(rng.integers(0, len(images), max(1, n // group))):
            for k in rng.choice(len(combos), group, replace=False):
                name, severity = combos[int(k)]
                out.append(corrupt(images[i], name, int(severity), int(rng.integers(0, 2**31 - 1))))
                captions.append(spec.prompt.format(**{
                    "class": words[spec.classes[labels[i]]],
                    "corruption": axes["corruption"].phrases[axes["corruption"].values.index(name)],
                    "severity": axes["severity"].phrases[axes["severity"].values.index(severity)]}))
                groups.append(g)
        return np.stack(out), captions, np.asarray(groups)

    def generate_rows(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        images, errors = self.read(batch)
        for i in np.flatnonzero(errors == ""):
            images[i] = corrupt(images[i], str(batch["corruption"][i]), int(batch["severity"][i]), int(batch["seed"][i]))
        return images, errors
