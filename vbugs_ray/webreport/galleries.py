"""The images a report shows: a few failing rows of each bug and of its class without it, as small
inline thumbnails (data: URIs, so the page opens with no file beside it and no network)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

PER_GALLERY = 10
THUMB_PX = 96  # longest side; smaller images keep their size (the page scales them up)


@dataclass(frozen=True)
class Tile:
    """One image of a gallery: the picture, the true class, what the classifier said, the prompt."""

    src: str
    true_class: str
    predicted: str
    wrong: bool
    prompt: str


def thumbnail(png: bytes) -> str:
    """A JPEG data: URI of the image, at most THUMB_PX on its longest side (a few kB: a generated
    image's noise makes even a 64-px PNG ten times larger)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


class Rows:
    """The rows of some Parquet files (a run's shards, a verification's rounds), read once with
    the columns a gallery is chosen by; images are read afterwards, only for the rows picked."""

    def __init__(self, files: list[str], axes: list[str]):
        self.dataset = pads.dataset(files, format="parquet") if files else None
        names = set(self.dataset.schema.names) if self.dataset is not None else set()
        wanted = ["row_id", "class", "error", "pred", *axes, *(c for c in ("valid", "hypothesis", "arm") if c in names)]
        table = self.dataset.to_table(columns=[c for c in wanted if c in names]) if self.dataset is not None \
            else pa.table({"row_id": pa.array([], pa.int64())})
        self.n, self.table = table.num_rows, table
        self.columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        if "valid" in self.columns:
            self.valid = self.columns["valid"].astype(bool)
        else:
            self.valid = np.ones(self.n, bool)
        self._as_text: dict[str, np.ndarray] = {}

    def column(self, name: str) -> np.ndarray:
        """A column as strings (an absent one as empty strings), for masks; converted once."""
        if name not in self._as_text:
            values = self.columns.get(name)
            self._as_text[name] = np.full(self.n, "", object) if values is None else values.astype(str)
        return self._as_text[name]

    def error_counts(self, by: list[str]) -> dict[tuple[str, ...], tuple[int, int]]:
        """(errors, valid rows) per combination of the ``by`` columns' values (pyarrow group-by)."""
        if self.n == 0 or any(name not in self.columns for name in (*by, "error")):
            return {}
        table = self.table.select([*by, "error"]).filter(pa.array(self.valid))
        table = table.set_column(len(by), "error", pc.cast(table.column("error"), pa.int64()))
        for i, name in enumerate(by):
            table = table.set_column(i, name, pc.cast(table.column(name), pa.string()))
        grouped = table.group_by(by).aggregate([("error", "sum"), ("error", "count")]).to_pydict()
        return {tuple(grouped[name][i] for name in by): (grouped["error_sum"][i], grouped["error_count"][i])
                for i in range(len(grouped["error_sum"]))}

    def matching(self, predicates: dict[str, str], excluded: dict[str, str] | None = None) -> np.ndarray:
        """Valid rows with every ``axis == value`` of ``predicates`` and no ``axis == value`` of ``excluded``."""
        mask = self.valid.copy()
        for axis, value in predicates.items():
            mask &= self.column(axis) == str(value)
        for axis, value in (excluded or {}).items():
            mask &= self.column(axis) != str(value)
        return mask

    def errors(self) -> np.ndarray:
        return self.columns["error"].astype(bool) if "error" in self.columns else np.zeros(self.n, bool)

    def pick(self, mask: np.ndarray, limit: int = PER_GALLERY) -> list[int]:
        """Up to ``limit`` row ids where ``mask``, spread evenly over the rows (rows come cell by
        cell, so a spread shows the slice's variety rather than its first cell)."""
        where = np.flatnonzero(mask)
        if len(where) > limit:
            where = where[np.linspace(0, len(where) - 1, limit).round().astype(int)]
        ids = self.columns["row_id"][where].astype(int).tolist()
        return ids

    def tiles(self, ids_by_gallery: dict[str, list[int]]) -> dict[str, list[Tile]]:
        """The picked rows as thumbnails, in one read of the image column."""
        wanted = [i for ids in ids_by_gallery.values() for i in ids]
        if not wanted or self.dataset is None:
            return {name: [] for name in ids_by_gallery}
        columns = [c for c in ("row_id", "image_png", "prompt", "class", "pred", "error")
                   if c in self.dataset.schema.names]
        table = self.dataset.to_table(columns=columns, filter=pc.field("row_id").isin(sorted(set(wanted))))
        rows = {r["row_id"]: r for r in table.to_pylist()}
        out = {}
        for name, ids in ids_by_gallery.items():
            out[name] = [Tile(thumbnail(rows[i]["image_png"]), str(rows[i].get("class", "")),
                              str(rows[i].get("pred", "")), bool(rows[i].get("error")), str(rows[i].get("prompt", "")))
                         for i in ids if i in rows and rows[i].get("image_png")]
        return out
