"""Generator backend ``corruptions``: a dataset's images under parametric corruptions.

Options: ``source`` and ``held_out`` as for ``dataset``. The spec's axes are ``corruption``
(names from vbugs_ray.datasets.corruptions: gaussian_blur, gaussian_noise, brightness, contrast,
rotation, jpeg, occlusion; each value's words are its prompt phrase) and ``severity`` (1 to 5).
Every grid row shows a different audited image of its class (rows are independent draws, as the
slice search's tests assume; a spec asking for more rows of a class than it has images is
refused), corrupted deterministically by the row's seed. A flagged (class, corruption, severity) is verified by corrupting held-out images of the class.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vbugs_ray.datasets import rows as datarows
from vbugs_ray.datasets.corruptions import NAMES, SEVERITIES, corrupt
from vbugs_ray.errors import SpecError, quote
from vbugs_ray.grid import build_grid
from vbugs_ray.datasets.rows import DATA_ERROR
from vbugs_ray.datasets.sources import per_process
from vbugs_ray.roles.generators._reading import ReadingGenerator, items

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
    """Per class, the items it audits and the items it holds out (indexes), and every item's key
    (once per listing: every verification arm asks)."""
    return _pools_of(options.source, spec.classes, options.held_out, spec.seed)


@per_process
def _pools_of(source, classes: tuple[str, ...], held_out: float, seed: int):
    table = items(source, classes, held_out, seed)
    names = np.asarray(table.column("class").to_pylist(), dtype=object)
    usable = np.asarray(table.column(DATA_ERROR).to_pylist(), dtype=object) == ""
    held = table.column("held_out").to_numpy(zero_copy_only=False)
    audit = {c: np.flatnonzero(usable & ~held & (names == c)) for c in classes}
    kept = {c: np.flatnonzero(usable & held & (names == c)) for c in classes}
    return audit, kept, np.asarray(table.column("source").to_pylist(), dtype=object)


class CorruptionsGenerator(ReadingGenerator):
    draws_axes = True  # the same image under another corruption or severity (counterfactuals)

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
        """The spec's grid; every row of a class shows a different audited image of it (a shuffle
        of the class's audited share), so rows are independent draws, as the slice search's tests
        assume: the same image under several corruptions would count as several observations."""
        grid = build_grid(spec)
        audit, _, keys = _pools(options, spec)
        classes = np.asarray(grid.column("class").to_pylist(), dtype=object)
        source = np.full(grid.num_rows, "", dtype=object)
        for i, c in enumerate(spec.classes):
            rows = np.flatnonzero(classes == c)
            if len(rows) > len(audit[c]):
                per_cell = len(audit[c]) // int(np.prod([len(a.values) for a in spec.axes]))
                raise SpecError("images_per_cell" if spec.images_per_cell else "budget",
                                f"class {c!r} needs {len(rows)} images (one per row: a row never reuses an image) "
                                f"and the source has {len(audit[c])} audited ones; lower it (at most {per_cell} per "
                                f"cell), lower generator.options.held_out, or list fewer corruptions or severities")
            order = np.random.default_rng([spec.seed, 8181, i]).permutation(audit[c])
            source[rows] = keys[order[: len(rows)]]
        return grid.append_column("source", pa.array(source.tolist(), pa.string())).append_column(
            DATA_ERROR, pa.array([""] * grid.num_rows, pa.string()))

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
