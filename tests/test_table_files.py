"""What `vbugs slices --table` and `vbugs discover --table` read, and what they refuse: a folder's
data files are its `*.parquet` files (other files are named and skipped); a file that is not
Parquet, files that disagree on a column, a list/binary column named as a feature, a text loss
column, and an `--out` that cannot be written (also for `vbugs audit`) are each one line on
stderr, exit status 2, before the search starts. List and binary columns not named are left out
of the search, and a progress line says which."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbugs_ray.store import rows_table

N = 600
DIM = 8
SLICES = ("--error-col", "error", "--features", "a,b", "--max-order", "2")
DISCOVER = ("--error-col", "error", "--class-col", "", "--features", "a,b")


def _columns(seed: int = 0) -> dict:
    """Two features, a 0/1 error frequent where a=x and b=p, a loss and an embedding."""
    rng = np.random.default_rng(seed)
    a, b = rng.choice(["x", "y", "z"], N), rng.choice(["p", "q", "r"], N)
    error = np.where((a == "x") & (b == "p"), rng.random(N) < 0.6, rng.random(N) < 0.05).astype(np.int64)
    embedding = rng.normal(size=(N, DIM)).astype(np.float32) + error[:, None]
    return {"a": a, "b": b, "error": error, "loss": rng.random(N) + error,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embedding.reshape(-1)), DIM)}


def _write(path, seed: int = 0, drop: tuple = (), **changed) -> str:
    """A table of ``_columns`` with some columns dropped or replaced."""
    columns = {**_columns(seed), **changed}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: v for k, v in columns.items() if k not in drop}), path)
    return str(path)


def _folder(root, *extra: tuple[str, dict]) -> str:
    """A folder of one good file, ``part-0.parquet``, and ``extra`` (name, changes) files."""
    _write(root / "part-0.parquet")
    for i, (name, changes) in enumerate(extra):
        _write(root / name, seed=i + 1, **changes)
    return str(root)


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True, timeout=240)


def _one_line(done) -> str:
    """The single line a refused command printed (exit status 2, no traceback)."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("vbugs: error: ")
    return lines[0]


# -- files that are not a readable table -------------------------------------------------------

def _csv(tmp_path):
    (tmp_path / "rows.csv").write_text("a,b,error\nx,p,1\ny,q,0\n")
    return str(tmp_path / "rows.csv"), ["rows.csv", "not a Parquet file"]


def _empty(tmp_path):
    (tmp_path / "rows.parquet").write_bytes(b"")
    return str(tmp_path / "rows.parquet"), ["rows.parquet", "empty (0 bytes)"]


def _truncated(tmp_path):
    whole = (tmp_path / "whole.parquet")
    _write(whole)
    (tmp_path / "cut.parquet").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return str(tmp_path / "cut.parquet"), ["cut.parquet", "cannot be read as Parquet"]


def _broken_file_in_folder(tmp_path):
    root = _folder(tmp_path / "t")
    (tmp_path / "t" / "part-1.parquet").write_text("not parquet at all")
    return root, ["part-1.parquet", "cannot be read as Parquet"]


def _folder_of_csv(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rows.csv").write_text("a,b,error\nx,p,1\n")
    return str(tmp_path / "t"), ["holds no *.parquet files", "rows.csv"]


def _mixed_types(tmp_path):
    """(with a stray file too: its progress line waits until the checks pass, so the mistake is the only line)"""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.txt").write_text("")
    return _folder(tmp_path / "t", ("part-1.parquet", {"a": np.arange(N) % 3})), ["part-1.parquet", "'a'", "int64"]


def _missing_column(tmp_path):
    return _folder(tmp_path / "t", ("part-1.parquet", {"drop": ("b",)})), ["part-1.parquet", "no column 'b'"]


def _text_loss(tmp_path):
    return _write(tmp_path / "t.parquet", loss=np.full(N, "0.5")), ["--loss-col 'loss'", "numeric"]


BAD_TABLES = {f.__name__[1:]: f for f in (_csv, _empty, _truncated, _broken_file_in_folder, _folder_of_csv,
                                          _mixed_types, _missing_column, _text_loss)}


@pytest.mark.cli
@pytest.mark.parametrize("command", ["slices", "discover"])
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_bad_table_is_one_line_naming_the_file_or_column(case, command, tmp_path):
    table, named = BAD_TABLES[case](tmp_path)
    loss = ["--loss-col", "loss"] if case == "text_loss" else []
    line = _one_line(_vbugs(command, "--table", table, *(SLICES if command == "slices" else DISCOVER), *loss))
    assert all(n in line for n in named), line


def _run_store_rows(root) -> str:
    """A run store's rows folder as an audit writes it (``rows_table``: ``top5`` a list of names,
    ``image_png`` PNG bytes, ``embedding`` a fixed-size list), a staging folder left by a crash
    beside the finished shard."""
    columns = _columns()
    rng = np.random.default_rng(1)
    batch = {"row_id": np.arange(N), "class": columns["b"], "background": columns["a"], "error": columns["error"],
             "loss": columns["loss"], "top5": np.array(["star\tsquare"] * N, object),
             "embedding": rng.normal(size=(N, DIM)).astype(np.float32),
             "image": rng.integers(0, 255, (N, 4, 4, 3), dtype=np.uint8)}
    for shard in ("shard-00000", ".staging-shard-00001"):
        (root / shard).mkdir(parents=True)
        pq.write_table(rows_table(batch), root / shard / f"part-000000000000-{N}.parquet")
    return str(root)


@pytest.mark.cli
def test_the_run_store_as_a_table_skips_its_list_and_binary_columns(tmp_path):
    """`vbugs slices --table RUN_DIR/rows` once failed with KeyError: b'top5'."""
    rows, out = _run_store_rows(tmp_path / "rows"), tmp_path / "report.json"
    done = _vbugs("slices", "--table", rows, "--loss-col", "loss", "--max-order", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    skipped = [line for line in done.stderr.splitlines() if "left out of the search" in line]
    assert len(skipped) == 1 and all(c in skipped[0] for c in ("top5", "image_png", "embedding")), done.stderr
    report = json.loads(out.read_text())
    assert report["files"] == 1  # the staging folder is not read
    flagged = report["flagged_slices"]
    assert {column for s in flagged for column in s["predicates"]} <= {"class", "background", "row_id"}
    assert any(s["predicates"] == {"background": "x", "class": "p"} for s in flagged), flagged


@pytest.mark.cli
def test_a_mistake_in_a_run_store_table_is_the_only_line(tmp_path):
    """The line naming the skipped columns waits until every check has passed."""
    line = _one_line(_vbugs("slices", "--table", _run_store_rows(tmp_path / "rows"), "--error-col", "class"))
    assert "--error-col 'class'" in line and "text values" in line, line


@pytest.mark.cli
@pytest.mark.parametrize("command", ["slices", "discover"])
@pytest.mark.parametrize("column", ["top5", "image_png"])
def test_a_list_or_binary_column_named_as_a_feature_is_refused(column, command, tmp_path):
    rows = _run_store_rows(tmp_path / "rows")
    line = _one_line(_vbugs(command, "--table", rows, "--error-col", "error", "--features", f"background,{column}"))
    assert f"--features {column!r}" in line and "leave it out of --features" in line, line


@pytest.mark.cli
@pytest.mark.parametrize("command", ["slices", "discover"])
def test_a_stray_file_in_the_folder_is_named_and_skipped(command, tmp_path):
    root = _folder(tmp_path / "t", ("part-1.parquet", {}))
    (tmp_path / "t" / "notes.txt").write_text("how this table was made")
    (tmp_path / "t" / "_SUCCESS").write_text("")
    (tmp_path / "t" / ".part-0.parquet.crc").write_bytes(b"\0" * 12)
    out = tmp_path / "result.json"
    done = _vbugs(command, "--table", root, *(SLICES if command == "slices" else DISCOVER), "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "notes.txt" in done.stderr and "_SUCCESS" not in done.stderr and ".crc" not in done.stderr, done.stderr
    assert json.loads(out.read_text())["files"] == 2


def test_files_may_differ_in_the_width_of_a_number_column(tmp_path):
    """int32 in one file and int64 in another are the same kind of column: counted together."""
    from vbugs_ray.slices.parquet import parquet_counter, parquet_files, shard_pieces
    from vbugs_ray.table_files import check_same_columns, read_schemas

    narrow = pa.array(np.arange(N) % 4, pa.int32())
    root = _folder(tmp_path / "t", ("part-1.parquet", {"c": narrow}))
    _write(tmp_path / "t" / "part-0.parquet", c=np.arange(N) % 4)
    files = parquet_files(root)
    check_same_columns(files, read_schemas(files), ["c", "error"])
    counter = parquet_counter(shard_pieces(files), "error", ["c"])
    assert counter.values == [["0", "1", "2", "3"]]


# -- outputs that cannot be written ------------------------------------------------------------

def _under_proc(tmp_path):
    return "/proc/vbugs-out/result.json", "/proc"


def _under_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    return str(tmp_path / "afile" / "result.json"), str(tmp_path / "afile")


def _in_a_missing_folder(tmp_path):
    return str(tmp_path / "missing" / "result.json"), str(tmp_path / "missing")


def _onto_a_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    return str(tmp_path / "folder"), str(tmp_path / "folder")


def _read_only(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    if os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("this user can write into a read-only folder (root)")
    return str(tmp_path / "ro" / "result.json"), str(tmp_path / "ro")


BAD_OUTPUTS = {f.__name__[1:]: f for f in (_under_proc, _under_a_file, _in_a_missing_folder, _onto_a_folder,
                                           _read_only)}


@pytest.mark.cli
@pytest.mark.parametrize("command", ["slices", "discover"])
@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_an_unwritable_result_file_is_one_line(case, command, tmp_path):
    out, named = BAD_OUTPUTS[case](tmp_path)
    table = _write(tmp_path / "t.parquet")
    line = _one_line(_vbugs(command, "--table", table, *(SLICES if command == "slices" else DISCOVER), "--out", out))
    assert f"--out {out}" in line and named in line, line
    assert not (tmp_path / "missing").exists()  # a result file's folder is not made up


def _run_dirs(tmp_path) -> dict:
    """A run directory's path for each way it cannot be made, and what the line must name."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    return {"under_proc": ("/proc/vbugs-run", "/proc/vbugs-run"),
            "under_a_file": (str(tmp_path / "afile" / "run"), "afile"),
            "onto_a_file": (str(tmp_path / "afile"), "is a file, not a folder"),
            "read_only": (str(tmp_path / "ro" / "run"), "ro")}


@pytest.mark.cli
@pytest.mark.parametrize("case", ["under_proc", "under_a_file", "onto_a_file", "read_only"])
def test_an_unwritable_run_directory_is_one_line(case, tmp_path):
    """`vbugs audit --out` is refused before the audit's modules are even imported."""
    out, named = _run_dirs(tmp_path)[case]
    if case == "read_only" and os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("this user can write into a read-only folder (root)")
    line = _one_line(_vbugs("audit", "--out", out, "--executor", "local"))
    assert f"--out {out}" in line and named in line, line
