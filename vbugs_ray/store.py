"""The Parquet run store: ``RUN_DIR/rows/shard-NNNNN/*.parquet``, one row per image, in the
schema ``rows_table`` writes (the README lists its columns).

Shard k holds grid rows [k * shard_rows, (k + 1) * shard_rows). A shard is written into a hidden
staging folder and renamed into place when complete, so a shard folder either holds all its rows
or does not exist: an interrupted audit resumes with the missing shards and a re-run of a finished
one writes nothing. ``RUN_DIR/spec.json`` pins the spec; another spec in the same folder is refused.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.cache import key_of
from vbugs_ray.errors import RunStoreError
from vbugs_ray.spec import PIPELINE_ROLES, AuditSpec


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)
        self.rows_dir = self.root / "rows"
        self.spec_path = self.root / "spec.json"
        self.report_path = self.root / "report.json"

    # -- spec pinning -------------------------------------------------------------------------
    def open_for(self, spec: AuditSpec) -> None:
        """Create the run dir for ``spec``, or check that an existing one holds the same spec."""
        fingerprint = rows_fingerprint(spec)
        if self.spec_path.exists():
            held = json.loads(self.spec_path.read_text()).get("fingerprint")
            if held != fingerprint:
                raise RunStoreError(f"{self.root} holds a run of a different spec (rows would mix); "
                                    f"use another --out or delete the folder")
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.spec_path, {"fingerprint": fingerprint, "spec": spec.to_dict()})

    def load_spec_dict(self) -> dict:
        if not self.spec_path.exists():
            raise RunStoreError(f"{self.root} is not a run directory (no spec.json); run `vbugs audit` first")
        return json.loads(self.spec_path.read_text())["spec"]

    # -- shards -------------------------------------------------------------------------------
    def shard_dir(self, index: int) -> Path:
        return self.rows_dir / f"shard-{index:05d}"

    def staging_dir(self, index: int) -> Path:
        return self.rows_dir / f".staging-shard-{index:05d}"

    def done_shards(self) -> set[int]:
        if not self.rows_dir.exists():
            return set()
        return {int(p.name.split("-")[1]) for p in self.rows_dir.glob("shard-*") if p.is_dir()}

    def begin_shard(self, index: int) -> Path:
        """An empty staging folder for shard ``index`` (left-overs of a crashed attempt removed)."""
        staging = self.staging_dir(index)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def commit_shard(self, index: int) -> None:
        """Publish a complete shard: one atomic rename."""
        self.staging_dir(index).replace(self.shard_dir(index))

    # -- reading ------------------------------------------------------------------------------
    def dataset(self) -> pads.Dataset:
        if not self.done_shards():
            raise RunStoreError(f"{self.rows_dir} holds no finished shard; run `vbugs audit` first")
        return pads.dataset(str(self.rows_dir), format="parquet")

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The finished rows (optionally some columns), sorted by row_id."""
        table = self.dataset().to_table(columns=columns)
        if "row_id" in table.column_names:
            table = table.sort_by("row_id")
        return table

    def read_valid(self, columns: list[str]) -> pa.Table:
        """The rows the CLIP filter kept (all rows of a run without a filter column), sorted."""
        has_valid = "valid" in self.dataset().schema.names
        table = self.read(columns=[*columns, *(["valid"] if has_valid and "valid" not in columns else [])])
        if has_valid:
            table = table.filter(pc.fill_null(table.column("valid"), False))
        return table


def rows_fingerprint(spec: AuditSpec) -> str:
    """Hash of what decides the rows' content. Search settings, resources and the executor may
    change between runs of one run dir; the grid, the models and the shard size may not."""
    data = spec.to_dict()
    content = {k: data[k] for k in ("classes", "axes", "prompt", "images_per_cell", "budget", "sampling", "seed")}
    for role in PIPELINE_ROLES:
        content[role] = {"backend": data[role]["backend"], "options": data[role]["options"], "dtype": data[role]["dtype"]}
    content["filter"] = data["filter"]
    content["shard_rows"] = spec.run.shard_rows
    return key_of(content)


def plan_shards(n_rows: int, shard_rows: int) -> list[tuple[int, int, int]]:
    """(index, start, stop) of each shard."""
    return [(i, start, min(start + shard_rows, n_rows)) for i, start in enumerate(range(0, n_rows, shard_rows))]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def rows_table(batch: dict[str, Any]) -> pa.Table:
    """A finished batch (dict of numpy arrays) as run-store rows: the image as PNG bytes, ``top5``
    (tab-joined between stages) as a list of names, the embedding as a fixed-size list."""
    cols: dict[str, Any] = {}
    for name, values in batch.items():
        if name in ("image", "top5", "embedding"):
            continue
        cols[name] = pa.array(list(values) if np.asarray(values).dtype == object else values)
    cols["top5"] = pa.array([str(v).split("\t") if v else [] for v in batch["top5"]], pa.list_(pa.string()))
    emb = np.ascontiguousarray(batch["embedding"], dtype=np.float32)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    cols["image_png"] = pa.array([encode_png(im) for im in batch["image"]], pa.binary())
    return pa.table(cols)


class ShardWriter:
    """Writes finished rows of one streaming execution into their shards' staging folders and
    publishes each shard the moment it is whole.

    A table of rows at consecutive ``row_id`` from ``first_row_id`` is cut into shards of
    ``shard_rows`` (``plan_shards``); ``sizes`` maps each pending shard to its row count. Each call
    writes one Parquet file per shard it touches, named by its first row id and row count, under a
    temporary name and then renamed, so the staging folder only ever lists whole files; when the
    files of a shard add up to its size the staging folder is renamed into place (the
    ``RunStore.commit_shard`` guarantee: a shard folder holds all its rows or does not exist).
    Idempotent: a retried batch rewrites the same file names, and rows of a shard that is already
    published are dropped. Safe beside other writers of the same run (Ray tasks): only one of two
    writers that both see a shard complete wins the rename; the other finds it published.
    """

    def __init__(self, root: str | Path, first_row_id: int, shard_rows: int, sizes: dict[int, int]):
        self.store = RunStore(root)
        self.first_row_id, self.shard_rows = int(first_row_id), int(shard_rows)
        self.sizes = {int(k): int(v) for k, v in sizes.items()}

    def shard_of(self, row_ids: np.ndarray) -> np.ndarray:
        return (np.asarray(row_ids, np.int64) - self.first_row_id) // self.shard_rows

    def write(self, table: pa.Table) -> list[tuple[int, int, bool]]:
        """Write ``table``'s rows; returns (shard, rows written, published by this call) per shard."""
        shards = self.shard_of(table.column("row_id").to_numpy())
        out = []
        for shard in np.unique(shards).tolist():
            if shard not in self.sizes:
                raise RunStoreError(f"row ids {table.column('row_id')[0]}... fall in shard {shard}, "
                                    f"which this execution does not write")
            staging = self.store.staging_dir(shard)
            if not staging.exists():  # published by another writer (or a retried batch after it)
                out.append((shard, 0, False))
                continue
            part = table.filter(pa.array(shards == shard)).sort_by("row_id")
            name = f"part-{int(part.column('row_id')[0].as_py()):012d}-{part.num_rows}.parquet"
            tmp = staging / f".{name}.tmp"
            try:
                pq.write_table(part, tmp)
                tmp.replace(staging / name)
            except FileNotFoundError:  # published meanwhile by a writer of the same rows
                out.append((shard, 0, False))
                continue
            out.append((shard, part.num_rows, self.publish_if_whole(shard)))
        return out

    def publish_if_whole(self, shard: int) -> bool:
        """Publish the shard if its staging folder holds all its rows; True if this call did."""
        staging = self.store.staging_dir(shard)
        try:
            held = sum(int(p.stem.rsplit("-", 1)[1]) for p in staging.glob("part-*.parquet"))
        except FileNotFoundError:
            return False
        if held < self.sizes[shard]:
            return False
        if held > self.sizes[shard]:
            raise RunStoreError(f"{staging} holds {held} rows for a shard of {self.sizes[shard]}: rows written twice")
        try:
            self.store.commit_shard(shard)
        except OSError:  # another writer published it first
            return False
        return True
