"""What the two generators that read instead of draw (``dataset``, ``corruptions``) share.

A reading generator plans its own rows, so that every row names the image it shows (its
``source`` key):
- ``grid(options, spec)``: the audit's rows, from the source's items outside the held-out share;
- ``held_out_rows(options, spec, class, predicates, excluded, n, rng)``: a verification arm's
  rows, from the held-out share only (never an image the audit saw), at most one row per image;
- ``generate_rows(batch)``: the batch's images, and per row the reason it has none ("" if it has).
It shows what its images show: a free phrase ("in heavy fog") cannot be drawn, so a hypothesis
made of one is tested on the held-out images the embedder places nearest it (verify.retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vbugs_ray.datasets import rows as datarows
from vbugs_ray.datasets.rows import DATA_ERROR
from vbugs_ray.datasets.images import UNREADABLE
from vbugs_ray.datasets.sources import WHERE, SourceOptions, listing, open_source, per_process
from vbugs_ray.errors import SpecError
from vbugs_ray.fields import REQUIRED, option, parse_options

def _source(value, where: str) -> SourceOptions:
    return parse_options(SourceOptions, value, where)


@dataclass(frozen=True)
class ReadingOptions:
    source: SourceOptions = option(REQUIRED, parse=_source)
    held_out: float = option(0.3, kind=float, low=0, high=0.9)  # share of each class kept for verification


@per_process
def items(source: SourceOptions, classes: tuple[str, ...], held_out: float, seed: int) -> pa.Table:
    """The source's items with their class, label, data_error and whether they are held out."""
    table = listing(source)
    shown, label, errors = datarows.class_of(table.column("raw_label"), classes)
    if table.num_rows and (label < 0).all():
        seen = ", ".join(sorted({str(v) for v in shown})[:4])
        raise SpecError(f"{WHERE}.label_column", f"no label of the source is one of the spec's classes (it has {seen}...; "
                                                 "an integer label indexes classes, a text label names one)")
    keys = table.column("source").to_pylist()
    held = datarows.held_out_mask(keys, label, held_out, seed)
    return (table.append_column("class", pa.array(shown.tolist(), pa.string()))
            .append_column("label", pa.array(label)).append_column(DATA_ERROR, pa.array(errors.tolist(), pa.string()))
            .append_column("held_out", pa.array(held)))


def spec_items(options: ReadingOptions, spec) -> pa.Table:
    return items(options.source, spec.classes, options.held_out, spec.seed)


class ReadingGenerator:
    """Base of ``dataset`` and ``corruptions``: reads the batch's images by key."""

    reads_dataset = True
    draws_axes = False  # its images cannot be made again with other axis values (counterfactuals)
    Options = ReadingOptions

    @classmethod
    def check(cls, options, spec) -> None:
        open_source(options.source).check()
        if spec.verify is not None and spec.verify.replicate:
            raise SpecError("verify.replicate", "a dataset's held-out images are one sample: a second round on them "
                                                "would replicate nothing; set replicate: false")
        if spec.verify is not None and options.held_out == 0:
            raise SpecError("generator.options.held_out", "is 0, so verification has no image the audit did not see; "
                                                          "hold out a share (0.3) or set verify: false")

    def __init__(self, options, role_spec, spec):
        self.options, self.spec = options, spec
        self.source = open_source(options.source)

    def generate(self, prompts, seeds):
        raise TypeError(f"{type(self).__name__} reads images by key: call generate_rows with the rows")

    def read(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The rows' images (zeros where none) and per row its data error ("" if none)."""
        n = len(batch["source"])
        size = self.options.source.size
        errors = np.array(batch[DATA_ERROR], dtype=object) if DATA_ERROR in batch else np.full(n, "", dtype=object)
        images = np.zeros((n, size, size, 3), np.uint8)
        todo = [i for i in range(n) if not errors[i] and batch["source"][i]]
        for i in range(n):
            if not errors[i] and not batch["source"][i]:
                errors[i] = f"{datarows.NO_IMAGE}: the source holds no image for this row"
        for i, image in zip(todo, self.source.read([str(batch["source"][i]) for i in todo])):
            if isinstance(image, str):
                errors[i] = f"{UNREADABLE}: {image}"
            else:
                images[i] = image
        return images, errors
