"""The Parquet run store: ``RUN_DIR/rows/shard-NNNNN/*.parquet``, one row per image, in the
schema ``rows_table`` writes (the README lists its columns).

Shard k holds grid rows [k * shard_rows, (k + 1) * shard_rows). A shard is written into a hidden
staging folder and renamed into place when complete, so a shard folder either holds all its rows
or does not exist: an interrupted audit resumes with the missing shards and a re-run of a finished
one writes nothing. A shard folder counts as done only while its part files hold exactly its rows
(row count and row-id range, read from the Parquet footers): one that lost, cut or overwrote a file
is damaged, reads refuse it, and a re-run moves it to ``RUN_DIR/damaged/`` and writes it again.
``RUN_DIR/spec.json`` pins the spec; another spec in the same folder is refused.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.cache import key_of
from vbugs_ray.errors import RunStoreError
from vbugs_ray.grid import n_rows
from vbugs_ray.runlock import remove_run_dir_if_empty
from vbugs_ray.spec import PIPELINE_ROLES, AuditSpec, parse_spec

SHARD_NAME = re.compile(r"shard-(\d{5})")
PART_NAME = re.compile(r"part-(\d{12})-(\d+)\.parquet")  # the first row id and the row count


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class Survey:
    """What ``rows/`` holds against the shards a run should have: the whole shards (with their
    part files), the damaged ones (with what is wrong) and the entries that are no shard's."""

    planned: dict[int, range]
    whole: dict[int, list[Path]] = field(default_factory=dict)
    damaged: dict[int, str] = field(default_factory=dict)
    stray: list[Path] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        """Planned shards that are not whole: never written, or damaged."""
        return sorted(set(self.planned) - set(self.whole))

    def rows_missing(self) -> int:
        return sum(len(self.planned[index]) for index in self.missing)

    def files(self) -> list[str]:
        return [str(path) for index in sorted(self.whole) for path in self.whole[index]]

    def describe(self, limit: int = 3) -> str:
        """'shard-00003: 500 of 600 rows on disk; 2 shards not written (shard-00004, shard-00005)'."""
        damaged = [f"{shard_name(i)}: {why}" for i, why in sorted(self.damaged.items())]
        text = "; ".join(damaged[:limit]) + (f"; {len(damaged) - limit} more damaged" if len(damaged) > limit else "")
        absent = [i for i in self.missing if i not in self.damaged]
        if absent:
            names = ", ".join(shard_name(i) for i in absent[:limit]) + (", ..." if len(absent) > limit else "")
            text += f"{'; ' if text else ''}{len(absent)} shard{'s' if len(absent) > 1 else ''} not written ({names})"
        return text

    def name_stray(self, progress: Callable[[str], None]) -> None:
        for path in self.stray:
            progress(f"ignoring {path}: not a part file of this run's shards")


def _row_id_bounds(meta: pq.FileMetaData) -> tuple[int, int] | None:
    """(min, max) row_id from the row groups' statistics; None when a row group has none."""
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = next((group.column(j).statistics for j in range(group.num_columns)
                      if group.column(j).path_in_schema == "row_id"), None)
        if stats is None or not stats.has_min_max:
            return None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else None


def shard_problem(parts: list[Path], ids: range) -> str | None:
    """What keeps a shard's part files from holding exactly the rows ``ids`` (None: nothing).
    Footers only: each file must open, hold the rows its name says (count, first row id), and
    together they must hold ``len(ids)`` rows from ``ids.start`` to ``ids.stop - 1``."""
    held, bounds = 0, []
    for path in parts:
        first, count = (int(g) for g in PART_NAME.fullmatch(path.name).groups())
        try:
            meta = pq.read_metadata(path)
        except (OSError, ValueError, pa.ArrowException):
            return f"{path.name} is not a readable Parquet file (cut short or overwritten)"
        low_high = _row_id_bounds(meta)
        if meta.num_rows != count or low_high is None or low_high[0] != first:
            return f"{path.name} does not hold the {count} rows from row id {first} its name says"
        held += count
        bounds.append(low_high)
    if held != len(ids):
        return f"{held} of {len(ids)} rows on disk"
    low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
    if (low, high) != (ids.start, ids.stop - 1):
        return f"row ids {low}-{high} on disk, {ids.start}-{ids.stop - 1} expected"
    return None


class RunStore:
    """One run directory. ``planned`` (shard -> the row ids it holds) is what the shards are
    checked against; by default, the grid of the spec in spec.json. Reads take every shard and
    refuse (one line) a run with a shard missing or damaged, unless ``partial``: then they take
    the whole shards only."""

    def __init__(self, run_dir: str | Path, planned: dict[int, range] | None = None, partial: bool = False):
        self.root = Path(run_dir)
        self.rows_dir = self.root / "rows"
        self.spec_path = self.root / "spec.json"
        self.report_path = self.root / "report.json"
        self.partial = partial
        self._planned = planned
        self._checked: tuple[list, Survey] | None = None  # (the listing it was taken on, the survey)

    # -- spec pinning -------------------------------------------------------------------------
    def open_for(self, spec: AuditSpec, rows: int | None = None, data: str | None = None) -> None:
        """Create the run dir for ``spec`` (whose grid holds ``rows`` rows, read from a dataset
        whose listing hashes to ``data``), or check that an existing one holds rows of the same
        spec and data (a spec.json without rows, left by a start that failed, is replaced)."""
        fingerprint = rows_fingerprint(spec)
        if self.spec_path.exists() and self.holds_rows():
            held = self._held()
            if data is not None and held.get("data", data) != data:  # first: changed data changes auto axes too
                raise RunStoreError(f"{self.root} holds rows read from other data (the dataset's files, labels or "
                                    "metadata changed since it started); use another --out or delete the folder")
            if held.get("fingerprint") != fingerprint:
                raise RunStoreError(f"{self.root} holds rows of a different spec ({spec_changes(held.get('spec'), spec)}); "
                                    f"use another --out or delete the folder")
        self.rows_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.spec_path, {"fingerprint": fingerprint, "spec": spec.to_dict(),
                                           **({"rows": int(rows)} if rows is not None else {}),
                                           **({"data": data} if data is not None else {})})

    def forget_failed_start(self) -> None:
        """Remove what a first start that published no shard left (spec.json, staging folders,
        empty folders): the next start, with the same spec or a corrected one, begins clean."""
        if self.holds_rows():
            return
        for staging in self.rows_dir.glob(".staging-shard-*"):
            shutil.rmtree(staging, ignore_errors=True)
        self.spec_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.rows_dir.rmdir()
        remove_run_dir_if_empty(self.root)

    def _held(self) -> dict:
        try:
            return json.loads(self.spec_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunStoreError(f"{self.spec_path} cannot be read ({exc}); use another --out or delete the folder") from None

    def data_key(self) -> str | None:
        """The hash of the data its rows were read from (a dataset generator's run), else None."""
        return self._held().get("data") if self.spec_path.exists() else None

    def load_spec_dict(self) -> dict:
        if not self.spec_path.exists():
            raise RunStoreError(f"{self.root} is not a run directory (no spec.json); run `vbugs audit` first")
        return self._held()["spec"]

    def planned(self) -> dict[int, range]:
        """Shard -> the row ids it should hold."""
        if self._planned is None:
            held = self._held() if self.spec_path.exists() else {}
            spec = parse_spec(self.load_spec_dict(), source=str(self.spec_path))
            # a run records its row count (a dataset's rows are its images: known without reading it again)
            self._planned = plan_ranges(0, held.get("rows", n_rows(spec)), spec.run.shard_rows)
        return self._planned

    # -- shards -------------------------------------------------------------------------------
    def shard_dir(self, index: int) -> Path:
        return self.rows_dir / shard_name(index)

    def staging_dir(self, index: int) -> Path:
        return self.rows_dir / f".staging-{shard_name(index)}"

    def holds_rows(self) -> bool:
        """Whether any shard folder (whole or not) is published."""
        return self.rows_dir.is_dir() and any(SHARD_NAME.fullmatch(p.name) for p in self.rows_dir.iterdir())

    def survey(self) -> Survey:
        """Each published shard checked against the plan (footers only); hidden entries (staging
        folders, temporary files) are skipped, anything else that is no planned shard's part file
        is listed as stray."""
        planned = self.planned()
        survey = Survey(planned)
        entries = sorted(self.rows_dir.iterdir()) if self.rows_dir.is_dir() else []
        for entry in (e for e in entries if not e.name.startswith(".")):
            match = SHARD_NAME.fullmatch(entry.name)
            index = int(match.group(1)) if match else None
            if index not in planned:
                survey.stray.append(entry)
            elif not entry.is_dir():
                survey.damaged[index] = "not a folder"
            else:
                parts = sorted(p for p in entry.iterdir() if PART_NAME.fullmatch(p.name) and p.is_file())
                survey.stray += sorted(p for p in entry.iterdir() if p not in parts and not p.name.startswith("."))
                problem = shard_problem(parts, planned[index])
                if problem is None:
                    survey.whole[index] = parts
                else:
                    survey.damaged[index] = problem
        return survey

    def done_shards(self) -> set[int]:
        """The shards whose files hold exactly their rows."""
        return set(self.survey().whole)

    def set_aside_damaged(self, progress: Callable[[str], None]) -> Survey:
        """Survey the shards, moving each damaged one out of ``rows/`` (to ``damaged/``, kept for
        a look, never read) with one line saying what was wrong, so that it is written again."""
        survey = self.survey()
        survey.name_stray(progress)
        for index, problem in sorted(survey.damaged.items()):
            moved = self._set_aside(self.shard_dir(index))
            progress(f"{self.shard_dir(index)}: {problem}; moved to {moved}, generating it again")
        return survey

    def _set_aside(self, path: Path) -> Path:
        target = self.root / "damaged" / path.name
        copies = 0
        while target.exists():
            copies += 1
            target = self.root / "damaged" / f"{path.name}-{copies}"
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        return target

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
    def _listing(self) -> list[tuple[str, int, int]]:
        """Each entry of ``rows/`` and of its shard folders with its size and mtime: what a
        survey depends on, at the cost of a stat per file instead of a footer read."""
        listing = []
        entries = [*self.rows_dir.iterdir(), *self.rows_dir.glob("shard-*/*")] if self.rows_dir.is_dir() else []
        for path in entries:
            with contextlib.suppress(OSError):
                stat = path.stat()
                listing.append((str(path), stat.st_size, stat.st_mtime_ns))
        return sorted(listing)

    def checked(self) -> Survey:
        """The survey reads go by (taken again only when the files changed): a one-line error if
        a shard is missing or damaged, unless ``partial``, or if no shard is whole."""
        listing = self._listing()
        if self._checked is None or self._checked[0] != listing:
            survey = self.survey()
            if not survey.whole and not survey.damaged:
                raise RunStoreError(f"{self.rows_dir} holds no finished shard; run `vbugs audit` first")
            if survey.missing and not self.partial:
                raise RunStoreError(f"{self.root} is incomplete: {survey.describe()} ({survey.rows_missing()} of "
                                    f"{sum(map(len, survey.planned.values()))} rows missing); re-run `vbugs audit` "
                                    f"with its spec to write them (`vbugs slices --partial` searches the rows there)")
            if not survey.whole:
                raise RunStoreError(f"{self.rows_dir} holds no whole shard ({survey.describe()}); "
                                    f"re-run `vbugs audit` with its spec to write them")
            self._checked = (listing, survey)
        return self._checked[1]

    def files(self) -> list[str]:
        """The part files of the shards reads take."""
        return self.checked().files()

    def dataset(self) -> pads.Dataset:
        return pads.dataset(self.files(), format="parquet")

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


def _rows_content(data: dict) -> dict:
    """What decides the rows' content, from a spec's plain data."""
    content = {k: data[k] for k in ("classes", "axes", "prompt", "images_per_cell", "budget", "sampling", "seed")}
    for role in PIPELINE_ROLES:
        content[role] = {"backend": data[role]["backend"], "options": data[role]["options"], "dtype": data[role]["dtype"]}
    content["filter"] = data["filter"]
    content["shard_rows"] = data["run"]["shard_rows"]
    return content


def rows_fingerprint(spec: AuditSpec) -> str:
    """Hash of what decides the rows' content. Search settings, resources and the executor may
    change between runs of one run dir; the grid, the models and the shard size may not."""
    return key_of(_rows_content(spec.to_dict()))


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted path -> value (lists are values)."""
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def spec_changes(held: Any, spec: AuditSpec, limit: int = 5) -> str:
    """'budget 7200 -> 100, seed 0 -> 1': the fields deciding rows in which ``spec`` differs
    from the spec a run was made with (its plain data, ``held``)."""
    def shown(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    def flat(data: dict) -> dict[str, Any]:
        content = _rows_content(data)
        content["run"] = {"shard_rows": content.pop("shard_rows")}
        return _leaves(content)

    try:
        before = flat(held)
    except (KeyError, TypeError):
        return "its rows would differ"
    after = flat(spec.to_dict())
    gone = object()
    changed = [f"{path} {shown(before.get(path, None))} -> {shown(after.get(path, None))}"
               for path in [*after, *(p for p in before if p not in after)]
               if before.get(path, gone) != after.get(path, gone)]
    if not changed:
        return "its rows would differ"
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def plan_shards(n_rows: int, shard_rows: int) -> list[tuple[int, int, int]]:
    """(index, start, stop) of each shard."""
    return [(i, start, min(start + shard_rows, n_rows)) for i, start in enumerate(range(0, n_rows, shard_rows))]


def plan_ranges(first_row_id: int, n_rows: int, shard_rows: int) -> dict[int, range]:
    """Shard -> the row ids it holds, for rows at consecutive ids from ``first_row_id``."""
    return {i: range(first_row_id + start, first_row_id + stop) for i, start, stop in plan_shards(n_rows, shard_rows)}


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
        if name in ("image", "top5", "embedding", "image_png"):
            continue
        cols[name] = pa.array(list(values) if np.asarray(values).dtype == object else values)
    cols["top5"] = pa.array([str(v).split("\t") if v else [] for v in batch["top5"]], pa.list_(pa.string()))
    emb = batch["embedding"]
    emb = np.stack(list(emb)) if np.asarray(emb).dtype == object else emb  # rows read back from Parquet
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    if "image_png" in batch:  # stored rows scored again (a sweep): the image is already encoded
        cols["image_png"] = pa.array(list(batch["image_png"]), pa.binary())
    else:
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
