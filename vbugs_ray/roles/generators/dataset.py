"""Generator backend ``dataset``: audit a labelled image set as it is, its metadata as the axes.

Options: ``source`` (vbugs_ray.datasets.sources: image_folder, parquet, digits, idx) and
``held_out`` (0.3: the share of each class kept for verification). The spec says ``axes: auto``:
each metadata column (``source.metadata`` picks them) becomes an axis, numeric ones cut as the
slice search cuts them. One row per audited image; ``images_per_cell`` and ``budget`` do not
apply. A flagged slice (class=shirt, camera=b) is verified on held-out images of that slice.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from vbugs_ray.datasets import rows as datarows
from vbugs_ray.datasets.sources import WHERE, listing, per_process
from vbugs_ray.errors import SpecError
from vbugs_ray.grid import row_seeds
from vbugs_ray.datasets.rows import DATA_ERROR
from vbugs_ray.roles.generators._reading import ReadingGenerator, items, spec_items
from vbugs_ray.spec import RESERVED_COLUMNS, Axis


def _check_names(names: list[str], columns: list[str]) -> None:
    where = f"{WHERE}.metadata"
    for name in names:
        if name not in columns:
            raise SpecError(where, f"{name!r} is not a column of the source; it has "
                                   f"{', '.join(c for c in columns if c not in ('source', 'raw_label')) or 'none'}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in RESERVED_COLUMNS:
            raise SpecError(where, f"column {name!r} cannot be an axis (an axis is an identifier, not one of vbugs's "
                                   "own columns); name the others in source.metadata")


@per_process
def _metadata(options, classes: tuple[str, ...], seed: int, max_values: int, n_bins: int
              ) -> tuple[tuple[Axis, ...], dict[str, np.ndarray], np.ndarray]:
    """(axes, each axis's value per item as text, each item's data error, missing metadata included)."""
    table = listing(options.source)
    names = datarows.metadata_columns(table, options.source.metadata)
    _check_names(names, table.column_names)
    errors = np.asarray(items(options.source, classes, options.held_out, seed).column(DATA_ERROR).to_pylist(),
                        dtype=object)
    axes, text = [], {}
    for name in names:
        values, levels, missing = datarows.axis_values(table.column(name), max_values, n_bins)
        if not levels:
            raise SpecError(f"{WHERE}.metadata", f"column {name!r} holds no value; leave it out of source.metadata")
        text[name] = values
        axes.append(Axis(name, tuple(levels), tuple(f"{name} {v}" for v in levels)))
        errors = np.where((errors == "") & missing, f"{datarows.MISSING_METADATA}: no {name}", errors)
    return tuple(axes), text, errors


@per_process
def _held_out_columns(source, classes: tuple[str, ...], held_out: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held out, class, key) per item, as arrays once per listing: every verification arm asks."""
    table = items(source, classes, held_out, seed)
    return (table.column("held_out").to_numpy(zero_copy_only=False),
            np.asarray(table.column("class").to_pylist(), dtype=object),
            np.asarray(table.column("source").to_pylist(), dtype=object))


def _of(options, spec):
    return _metadata(options, spec.classes, spec.seed, spec.search.max_values, spec.search.n_bins)


def _cells(labels: np.ndarray, digits: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cell, replicate) per row: the (class, axis values) combination's number (-1 for a row
    without a known class) and the row's rank among its cell's rows."""
    combos = np.stack([np.maximum(labels, 0), *digits], axis=1) if len(labels) else np.zeros((0, 1), np.int64)
    cells = np.unique(combos, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)  # no product of sizes
    cells = np.where(labels >= 0, cells, -1).astype(np.int64)
    order = np.argsort(cells, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(cells[order])) + 1] if len(cells) else np.zeros(0, np.int64)
    replicate = np.empty(len(cells), np.int64)
    replicate[order] = np.arange(len(cells)) - np.repeat(starts, np.diff(np.r_[starts, len(cells)]))
    return cells, replicate


class DatasetGenerator(ReadingGenerator):
    @classmethod
    def check(cls, options, spec) -> None:
        super().check(options, spec)
        if tuple(spec.axes) != _of(options, spec)[0]:
            raise SpecError("axes", "the dataset generator takes its axes from the source's metadata: write axes: auto "
                                    "(pick columns with generator.options.source.metadata)")

    @classmethod
    def axes_from_data(cls, options, spec) -> tuple[Axis, ...]:
        """The metadata's axes; none for a source without metadata (a class-only audit: its
        failures are found by discovery and tested on held-out images by retrieval)."""
        super().check(options, spec)
        return _of(options, spec)[0]

    @classmethod
    def grid(cls, options, spec) -> pa.Table:
        """One row per audited image (the items outside the held-out share), in listing order."""
        table = spec_items(options, spec)
        axes, text, errors = _of(options, spec)
        audit = np.flatnonzero(~table.column("held_out").to_numpy(zero_copy_only=False))
        labels = table.column("label").to_numpy()[audit]
        digits = [np.asarray([{v: i for i, v in enumerate(a.values)}.get(v, 0) for v in text[a.name][audit]], np.int64)
                  for a in axes]
        cells, replicate = _cells(labels, digits)
        classes = np.asarray(table.column("class").to_pylist(), dtype=object)[audit]
        class_words = dict(zip(spec.classes, spec.class_phrases))
        words = {"class": [class_words.get(c, c) for c in classes],
                 **{a.name: [f"{a.name} {v}" for v in text[a.name][audit]] for a in axes}}
        columns = {"row_id": np.arange(len(audit), dtype=np.int64), "cell": cells, "replicate": replicate,
                   "class": classes.tolist(), "label": labels,
                   **{a.name: text[a.name][audit].tolist() for a in axes},
                   "prompt": [spec.prompt.format(**{k: w[i] for k, w in words.items()}) for i in range(len(audit))],
                   "seed": row_seeds(spec.seed, cells, replicate),
                   "source": np.asarray(table.column("source").to_pylist(), dtype=object)[audit].tolist(),
                   DATA_ERROR: errors[audit].tolist()}
        return pa.table({k: pa.array(v) for k, v in columns.items()})

    @classmethod
    def held_out_rows(cls, options, spec, class_name: str, predicates: dict, excluded: tuple, n: int,
                      rng: np.random.Generator) -> dict[str, list]:
        """Up to ``n`` held-out images of the class that show ``predicates`` and none of ``excluded``."""
        held, classes, keys = _held_out_columns(options.source, spec.classes, options.held_out, spec.seed)
        axes, text, errors = _of(options, spec)
        pool = held & (classes == class_name) & (errors == "")
        for axis, value in predicates.items():
            pool &= text[axis] == value
        for axis, value in excluded:
            pool &= text[axis] != value
        chosen = datarows.draw_held_out(np.flatnonzero(pool), n, rng)
        return {"source": keys[chosen].tolist(), **{a.name: text[a.name][chosen].tolist() for a in axes}}

    @classmethod
    def training_pool(cls, options, spec, n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Up to ``n`` audited images with their prompts (a group each), for an embedder to learn
        the spec's words for the metadata."""
        from vbugs_ray.datasets.sources import open_source

        grid = cls.grid(options, spec)
        usable = np.flatnonzero(np.asarray(grid.column(DATA_ERROR).to_pylist(), dtype=object) == "")
        chosen = np.sort(np.random.default_rng([seed, 5151]).permutation(usable)[:n])
        read = open_source(options.source).read([grid.column("source")[int(i)].as_py() for i in chosen])
        ok = [j for j, image in enumerate(read) if not isinstance(image, str)]
        prompts = grid.column("prompt").to_pylist()
        return (np.stack([read[j] for j in ok]), [prompts[int(chosen[j])] for j in ok], np.arange(len(ok)))

    def generate_rows(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.read(batch)
