"""A damaged run store is named, never read quietly: `vbugs slices` on it is one line and exit 2
(unless --partial), and `vbugs audit` re-run sets the damaged shard aside and writes it again,
to the rows of an undamaged run. Stray files are ignored. A failed first start leaves nothing,
and a changed spec is refused with the fields that changed."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vbugs_ray.errors import RunStoreError
from vbugs_ray.spec import parse_spec
from vbugs_ray.store import RunStore, plan_ranges

DAMAGED = "shard-00002"  # of 6 shards of 8 rows, each written as two part files of 4 rows


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


def _spec_dict(default_spec_dict) -> dict:
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=48, verify=False)
    spec["run"] = {"executor": "local", "shard_rows": 8}
    spec["search"]["min_support"] = 4
    for role in ("generator", "embedder", "classifier"):
        spec[role]["batch_size"] = 4  # a part file per classifier batch: two per shard
    return spec


def _write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def undamaged(default_spec_dict, tmp_path_factory) -> tuple[Path, Path]:
    """(spec file, run dir) of one small audit, run once for the module and copied by each test."""
    folder = tmp_path_factory.mktemp("undamaged")
    spec = _write_spec(folder, _spec_dict(default_spec_dict))
    done = _vbugs("audit", str(spec), "--out", str(folder / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    return spec, folder / "run"


def _part(run: Path) -> Path:
    return sorted((run / "rows" / DAMAGED).glob("part-*.parquet"))[0]


def _delete(run: Path) -> None:
    _part(run).unlink()


def _truncate(run: Path) -> None:
    part = _part(run)
    part.write_bytes(part.read_bytes()[:-100])


def _garbage(run: Path) -> None:
    part = _part(run)
    part.write_bytes(os.urandom(part.stat().st_size))


def _shard_gone(run: Path) -> None:
    shutil.rmtree(run / "rows" / DAMAGED)


def _stray_in_rows(run: Path) -> None:
    (run / "rows" / "notes.txt").write_text("a note\n")


def _stray_in_shard(run: Path) -> None:
    (run / "rows" / DAMAGED / "notes.txt").write_text("a note\n")


DAMAGE = {  # how the store is damaged -> what `vbugs slices` says is wrong with the shard
    "deleted part file": (_delete, "4 of 8 rows on disk"),
    "truncated part file": (_truncate, "is not a readable Parquet file"),
    "garbage part file": (_garbage, "is not a readable Parquet file"),
    "shard folder gone": (_shard_gone, "1 shard not written"),
}
def _stray_parquet(run: Path) -> None:
    """A Parquet file of rows that belongs to no shard (read as rows, it would count twice)."""
    shutil.copy(_part(run), run / "rows" / "notes.parquet")


STRAY = {"stray file under rows": _stray_in_rows, "stray file in a shard": _stray_in_shard,
         "stray Parquet file under rows": _stray_parquet}


def _rows(run: Path):
    return RunStore(run).read()


def _other_shards(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (run / "rows").glob("shard-*/part-*.parquet") if DAMAGED not in str(p)}


@pytest.mark.cli
@pytest.mark.trains
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_shard_is_named_and_written_again(kind, undamaged, tmp_path):
    spec, original = undamaged
    run = shutil.copytree(original, tmp_path / "run")
    damage, why = DAMAGE[kind]
    damage(run)

    done = _vbugs("slices", str(run))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert DAMAGED in done.stderr and why in done.stderr and "8 of 48 rows missing" in done.stderr

    partial = _vbugs("slices", str(run), "--partial")
    assert partial.returncode == 0, partial.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert report["partial"] is True and report["rows_missing"] == 8 and report["shards_missing"] == [2]
    assert report["n_images"] <= 40 and "partial run: 8 rows missing" in partial.stdout

    others = _other_shards(run)
    again = _vbugs("audit", str(spec), "--out", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    said = [line for line in again.stderr.splitlines() if DAMAGED in line]
    if kind != "shard folder gone":  # a missing shard is simply pending, as after an interrupt
        assert len(said) == 1 and why in said[0] and "generating it again" in said[0], again.stderr
        assert list((run / "damaged").iterdir()) == [run / "damaged" / DAMAGED]  # kept for a look, never read
    assert _other_shards(run) == others  # only the damaged shard is written again
    assert _rows(run).equals(_rows(original))  # every column, image bytes included, row for row
    assert json.loads((run / "report.json").read_text())["n_images"] == \
        json.loads((original / "report.json").read_text())["n_images"]


@pytest.mark.cli
@pytest.mark.trains
@pytest.mark.parametrize("kind", list(STRAY))
def test_a_stray_file_is_ignored(kind, undamaged, tmp_path):
    spec, original = undamaged
    run = shutil.copytree(original, tmp_path / "run")
    STRAY[kind](run)

    done = _vbugs("slices", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "notes." in done.stderr and "not a part file" in done.stderr and "Traceback" not in done.stderr
    assert json.loads((run / "report.json").read_text()) == json.loads((original / "report.json").read_text())

    files = {p: p.stat().st_mtime_ns for p in (run / "rows").rglob("*")}
    again = _vbugs("audit", str(spec), "--out", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 already done" in again.stderr and not (run / "damaged").exists()
    assert {p: p.stat().st_mtime_ns for p in (run / "rows").rglob("*")} == files  # the note stays, nothing rewritten
    assert _rows(run).equals(_rows(original))


def _write_part(folder: Path, row_ids: list[int], name: str | None = None, **options) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"row_id": pa.array(row_ids, pa.int64()), "x": pa.array([0.5] * len(row_ids))})
    pq.write_table(table, folder / (name or f"part-{row_ids[0]:012d}-{len(row_ids)}.parquet"), **options)


def test_the_check_names_what_is_wrong_from_the_footers(tmp_path):
    """Each shard is checked against the row ids it should hold: a part file whose name lies, a
    shard holding another shard's rows, a file without row-id statistics and a file that is
    not Parquet are damaged, with a reason each; the rest is whole or stray."""
    store = RunStore(tmp_path, planned=plan_ranges(100, 40, 8))  # shards 0-4: ids 100-107, ..., 132-139
    _write_part(store.shard_dir(0), [100, 101, 102, 103])
    _write_part(store.shard_dir(0), [104, 105, 106, 107])
    _write_part(store.shard_dir(1), list(range(108, 116)), name="part-000000000108-6.parquet")
    _write_part(store.shard_dir(2), list(range(124, 132)))  # shard 3's rows
    _write_part(store.shard_dir(3), list(range(124, 132)), write_statistics=False)
    _write_part(store.shard_dir(4), list(range(132, 140)))
    (store.shard_dir(4) / "part-000000000200-1.parquet").write_text("not parquet")
    _write_part(store.rows_dir / "shard-00009", list(range(172, 180)))  # no shard of this run
    survey = store.survey()
    assert set(survey.whole) == {0} and survey.files() == [str(p) for p in sorted(store.shard_dir(0).iterdir())]
    assert survey.damaged == {
        1: "part-000000000108-6.parquet does not hold the 6 rows from row id 108 its name says",
        2: "row ids 124-131 on disk, 116-123 expected",
        3: "part-000000000124-8.parquet does not hold the 8 rows from row id 124 its name says",
        4: "part-000000000200-1.parquet is not a readable Parquet file (cut short or overwritten)"}
    assert survey.stray == [store.rows_dir / "shard-00009"] and survey.rows_missing() == 32
    with pytest.raises(RunStoreError, match=r"is incomplete: .* \(32 of 40 rows missing\)"):
        store.read()
    assert RunStore(tmp_path, planned=store.planned(), partial=True).read().column("row_id").to_pylist() == \
        list(range(100, 108))


def test_a_changed_spec_is_refused_naming_what_changed(default_spec_dict, tmp_path):
    """Rows of two specs never mix; the refusal says which fields differ. A spec.json with no
    rows beside it (a start that died) does not refuse another spec."""
    spec = _spec_dict(default_spec_dict)
    store = RunStore(tmp_path / "run")
    store.open_for(parse_spec(spec))
    (store.shard_dir(0)).mkdir()  # a published shard: the folder holds rows
    changed = dict(spec, budget=40, seed=1)
    changed["classifier"] = dict(spec["classifier"], options=dict(spec["classifier"]["options"], epochs=7))
    with pytest.raises(RunStoreError) as refused:
        store.open_for(parse_spec(changed))
    assert str(refused.value) == (f"{store.root} holds rows of a different spec (budget 48 -> 40, seed 0 -> 1, "
                                  "classifier.options.epochs 6 -> 7); use another --out or delete the folder")
    spec["search"]["alpha"] = 0.01  # search settings do not decide rows
    store.open_for(parse_spec(spec))

    store.shard_dir(0).rmdir()
    store.open_for(parse_spec(changed))
    assert json.loads(store.spec_path.read_text())["spec"]["seed"] == 1


@pytest.mark.cli
def test_a_changed_spec_is_one_line_on_the_command_line(undamaged, tmp_path):
    spec, original = undamaged
    run = shutil.copytree(original, tmp_path / "run")
    other = yaml.safe_load(spec.read_text())
    other.update(budget=40, seed=1)
    done = _vbugs("audit", str(_write_spec(tmp_path, other)), "--out", str(run))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "holds rows of a different spec (budget 48 -> 40, seed 0 -> 1)" in done.stderr
    assert _rows(run).equals(_rows(original))


@pytest.mark.cli
@pytest.mark.trains
def test_a_start_that_fails_before_any_row_leaves_nothing(default_spec_dict, tmp_path):
    """A spec that fails when its models load (after it validated) leaves no spec.json to
    refuse the corrected spec with."""
    spec = _spec_dict(default_spec_dict)
    spec["classifier"] = {"backend": "module", "batch_size": 4, "options": {
        "callable": "vbugs_ray.tiny:ImageBlind", "kwargs": {"num_classes": 6},
        "checkpoint": str(tmp_path / "no-such-weights.pt"),
        "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "class_map": {c: i for i, c in enumerate(spec["classes"])}}}
    run = tmp_path / "run"
    done = _vbugs("audit", str(_write_spec(tmp_path, spec)), "--out", str(run))
    assert done.returncode == 2 and "no-such-weights.pt" in done.stderr and "Traceback" not in done.stderr
    assert not run.exists()

    del spec["classifier"]["options"]["checkpoint"]
    fixed = _vbugs("audit", str(_write_spec(tmp_path, spec)), "--out", str(run))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert _rows(run).num_rows == 48
