"""`vbugs slices --table` reads the error column only as 0/1, true/false, or two text values with
--positive; anything else is one line on stderr, before the search starts. Rows with no error
value (null, NaN) are left out of every count and reported as `rows_missing_error`."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbugs_ray.errors import TableError
from vbugs_ray.slices.parquet import parquet_counter, parquet_files, shard_pieces
from vbugs_ray.table import check_error_column

N = 3000
COLUMN = "wrong_pred"  # not "error", so that a message naming it is not just quoting --error-col


def _planted(seed=0):
    """Two features and a 0/1 error that is frequent where a=x and b=p (a slice to flag)."""
    rng = np.random.default_rng(seed)
    a = rng.choice(["x", "y", "z"], N)
    b = rng.choice(["p", "q", "r"], N)
    error = np.where((a == "x") & (b == "p"), rng.random(N) < 0.5, rng.random(N) < 0.05)
    return rng, a, b, error


def _write(path, error, **extra) -> str:
    _, a, b, _ = _planted()
    pq.write_table(pa.table({"a": a[:len(error)], "b": b[:len(error)], COLUMN: error, **extra}), path)
    return str(path)


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


def _bad_columns():
    rng, _, _, error = _planted()
    yes_no = np.where(error, "yes", "no")
    return {
        "minus_one_one": (pa.array(np.where(error, 1, -1)), [], "--error-col"),
        "yes_no_without_positive": (pa.array(yes_no), [], "--positive"),
        "zero_one_strings": (pa.array(error.astype(int).astype(str)), [], "--positive"),
        "probabilities": (pa.array(rng.random(N)), [], "threshold"),
        "float_with_two": (pa.array(np.where(np.arange(N) == 5, 2.0, error.astype(float))), [], "found 2:"),
        "positive_not_present": (pa.array(yes_no), ["--positive", "maybe"], "--positive 'maybe'"),
        "three_text_values": (pa.array(np.where(np.arange(N) % 7 == 0, "maybe", yes_no)), ["--positive", "yes"],
                              "'maybe'"),
        "long_text_values": (pa.array(np.char.add(yes_no, "_" * 200)), [], "..."),
        "positive_with_bool": (pa.array(error), ["--positive", "True"], "--positive"),
        "features_name_the_error": (pa.array(error), ["--features", f"a,{COLUMN}"], "--features"),
        "features_name_the_loss": (pa.array(error), ["--loss-col", "loss", "--features", "a,loss"], "--features"),
    }


@pytest.mark.cli
@pytest.mark.parametrize("case", sorted(_bad_columns()))
def test_an_unusable_error_column_is_one_line(case, tmp_path):
    error, args, expected = _bad_columns()[case]
    table = _write(tmp_path / "t.parquet", error, loss=np.ones(N))
    done = _vbugs("slices", "--table", table, "--error-col", COLUMN, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    named = "'loss'" if case == "features_name_the_loss" else repr(COLUMN)
    assert named in lines[0] and expected in lines[0], lines[0]
    assert len(lines[0]) < 300  # long values are cut


def _report(tmp_path, table, *args) -> dict:
    out = tmp_path / "report.json"
    done = _vbugs("slices", "--table", table, "--error-col", COLUMN, "--features", "a,b", "--max-order", "2",
                  "--out", str(out), *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.cli
@pytest.mark.parametrize("kind", ["bool", "int8", "int64", "float"])
def test_flag_columns_are_read_as_errors(kind, tmp_path):
    _, _, _, error = _planted()
    column = pa.array(error).cast(pa.bool_() if kind == "bool" else getattr(pa, kind if kind != "float" else "float64")())
    report = _report(tmp_path, _write(tmp_path / "t.parquet", column))
    assert report["rows_missing_error"] == 0
    assert report["n_images"] == N and report["base_error_rate"] == pytest.approx(error.mean())
    assert report["flagged_slices"][0]["predicates"] == {"a": "x", "b": "p"}


@pytest.mark.cli
def test_rows_without_an_error_value_are_left_out(tmp_path):
    _, _, _, error = _planted()
    values = error.astype(float)
    values[::11] = np.nan
    nulls = np.arange(N) % 13 == 1
    column = pa.array(values, mask=nulls)  # NaN rows and null rows
    missing = np.isnan(values) | nulls
    report = _report(tmp_path, _write(tmp_path / "t.parquet", column))
    assert report["rows_missing_error"] == int(missing.sum()) > 0
    assert report["n_images"] == int((~missing).sum())
    assert report["base_error_rate"] == pytest.approx(error[~missing].mean())
    flagged = report["flagged_slices"][0]
    _, a, b, _ = _planted()
    inside = (a == "x") & (b == "p") & ~missing
    assert flagged["predicates"] == {"a": "x", "b": "p"}
    assert (flagged["n"], flagged["errors"]) == (int(inside.sum()), int(error[inside].sum()))


@pytest.mark.cli
def test_positive_reads_two_text_values_like_zero_one(tmp_path):
    _, _, _, error = _planted()
    as_text = _report(tmp_path, _write(tmp_path / "text.parquet", np.where(error, "yes", "no")), "--positive", "yes")
    as_flags = _report(tmp_path, _write(tmp_path / "flags.parquet", error.astype(np.int64)))
    key = lambda report: [(s["predicates"], s["n"], s["errors"], s["q_value"]) for s in report["flagged_slices"]]
    assert key(as_text) and key(as_text) == key(as_flags)
    assert as_text["n_images"] == as_flags["n_images"] and as_text["base_error_rate"] == as_flags["base_error_rate"]


def test_missing_error_rows_leave_every_count(tmp_path):
    """A feature value seen only on rows without an error is no value of the search, and the
    loss sums leave those rows out too."""
    rng, a, _, error = _planted()
    missing = rng.random(N) < 0.2
    a = np.where(missing, "only_unlabelled", a)
    loss = rng.random(N)
    pq.write_table(pa.table({"a": a, COLUMN: pa.array(error, mask=missing), "loss": loss}), tmp_path / "t.parquet")
    counter = parquet_counter(shard_pieces(parquet_files(tmp_path)), COLUMN, ["a"], "loss")
    assert counter.values[0] == ["x", "y", "z"]
    n_rows, n_errors, loss_sum, _ = counter.totals()
    assert (n_rows, n_errors) == (int((~missing).sum()), int(error[~missing].sum()))
    assert loss_sum == pytest.approx(loss[~missing].sum())
    counts = counter.count([(0,)])[(0,)]
    assert counts.n.tolist() == [int(((a == v) & ~missing).sum()) for v in ["x", "y", "z"]]


@pytest.mark.parametrize("type_", [pa.int8(), pa.uint8(), pa.int16(), pa.uint32(), pa.int64()])
def test_any_integer_type_of_zero_one_is_accepted(type_, tmp_path):
    table = _write(tmp_path / "t.parquet", pa.array([0, 1, None, 1] * 10, type_))
    assert check_error_column([table], COLUMN, None) == 10


def test_the_message_quotes_at_most_five_values(tmp_path):
    table = _write(tmp_path / "t.parquet", pa.array(np.linspace(0.01, 0.99, N)))
    with pytest.raises(TableError) as caught:
        check_error_column([table], COLUMN, None)
    quoted = str(caught.value).split("found ")[1].split(":")[0].split(", ")
    assert len(quoted) == 6 and quoted[-1] == "..."  # five values, then a mark that there are more


def test_a_dictionary_text_column_takes_positive(tmp_path):
    table = _write(tmp_path / "t.parquet", pa.array(["ok", "bad", None, "ok"] * 10).dictionary_encode())
    assert check_error_column([table], COLUMN, "bad") == 10
    counter = parquet_counter(shard_pieces([table]), COLUMN, ["a"], positive="bad")
    assert counter.totals()[:2] == (30, 10)
