"""The slice search over Parquet shards with Ray tasks, and `vbugs slices --table`."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbugs_ray.slices import SearchSettings
from vbugs_ray.slices.search import search_slices
from vbugs_ray.raycluster import RayRunner
from vbugs_ray.slices.parquet import parquet_counter, parquet_files, shard_pieces
from vbugs_ray.slices.search import run_search


@pytest.fixture(scope="module")
def sharded_table(tmp_path_factory):
    rng = np.random.default_rng(3)
    n = 40_000
    cols = {f"f{j}": rng.integers(0, 4, n).astype(str) for j in range(5)}
    cols["score"] = rng.normal(size=n)           # numeric: binned into quantiles
    cols["bucket"] = rng.integers(0, 3, n)       # few integers: one value each
    inside = (cols["f1"] == "2") & (cols["f4"] == "0")
    error = np.where(inside, rng.random(n) < 0.3, rng.random(n) < 0.05)
    loss = rng.exponential(0.5, n) + error
    table = pa.table({**cols, "error": error, "loss": loss})
    root = tmp_path_factory.mktemp("table")
    for i in range(4):
        pq.write_table(table.slice(i * 10_000, 10_000), root / f"part-{i}.parquet")
    return root, cols, error, loss


@pytest.mark.ray
def test_shards_give_the_same_result_as_one_table(sharded_table, ray_session):
    root, cols, error, loss = sharded_table
    features = [f"f{j}" for j in range(5)] + ["bucket"]
    settings = SearchSettings(max_order=3)
    pieces = shard_pieces(parquet_files(root), target_rows=10_000)  # one shard per file
    assert len(pieces) == 4
    counter = parquet_counter(pieces, "error", features, "loss", runner=RayRunner())
    sharded = run_search(counter, settings)
    in_process = run_search(parquet_counter(pieces, "error", features, "loss"), settings)
    key = lambda r: [(s["predicates"], s["n"], s["errors"], s["explained_by"]) for s in r.flagged]
    assert key(in_process) == key(sharded)  # loss sums differ only by float summation order
    local = search_slices({f: cols[f].astype(str) for f in features}, error, settings, loss=loss)
    assert sharded.n_rows == 40_000 and sharded.lattice_size == local.lattice_size
    assert [s["predicates"] for s in sharded.flagged] == [s["predicates"] for s in local.flagged]
    assert sharded.flagged[0]["predicates"] == {"f1": "2", "f4": "0"}
    assert sharded.flagged[0]["n"] == local.flagged[0]["n"]
    assert sharded.flagged[0]["loss_mean"] == pytest.approx(local.flagged[0]["loss_mean"])
    assert counter.values[features.index("bucket")] == ["0", "1", "2"]


@pytest.mark.ray
def test_numeric_columns_are_binned(sharded_table, ray_session):
    root, *_ = sharded_table
    pieces = shard_pieces(parquet_files(root), target_rows=10_000)
    counter = parquet_counter(pieces, "error", ["score"], n_bins=5, runner=RayRunner())
    assert len(counter.values[0]) == 5  # five quantile bins
    counts = counter.count([(0,)])[(0,)]
    assert counts.n[:5].tolist() == pytest.approx([8000] * 5, abs=400)


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


@pytest.mark.cli
def test_cli_table_search_writes_flagged_slices(sharded_table, tmp_path):
    root, *_ = sharded_table
    out = tmp_path / "slices.json"
    done = _vbugs("slices", "--table", str(root), "--error-col", "error", "--loss-col", "loss",
                  "--features", "f0,f1,f2,f3,f4", "--max-order", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["flagged_slices"][0]["predicates"] == {"f1": "2", "f4": "0"}
    assert report["lattice_size"] == 5 * 4 + 10 * 16 and report["evaluated_slices"] <= report["lattice_size"]


@pytest.mark.cli
def test_cli_table_errors_are_one_line(sharded_table, tmp_path):
    root, *_ = sharded_table
    done = _vbugs("slices", "--table", str(root), "--error-col", "wrong")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vbugs: error: --error-col 'wrong' is not a column of {root}; columns: "
        "f0, f1, f2, f3, f4, score, bucket, error, loss"]
    done = _vbugs("slices", "--table", str(tmp_path / "none.parquet"))
    assert done.returncode == 2 and "no Parquet file or directory" in done.stderr
    done = _vbugs("slices", "--table", str(root), "--max-order", "9")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == ["vbugs: error: --max-order: must be <= 5; got 9"]


def test_a_shard_is_about_a_million_rows_of_whole_row_groups(sharded_table, tmp_path):
    """Many small files share a shard (a run store's 4,096-row files are counted together); a
    large file is cut at row-group boundaries."""
    root, *_ = sharded_table
    files = parquet_files(root)  # 4 files of 10,000 rows, one row group each
    assert shard_pieces(files) == [tuple((f, (0,)) for f in files)]  # 40k rows: one shard
    assert [len(p) for p in shard_pieces(files, target_rows=20_000)] == [2, 2]
    big = tmp_path / "big.parquet"
    pq.write_table(pq.read_table(files[0]), big, row_group_size=2_500)  # one file, 4 row groups
    assert shard_pieces([str(big)], target_rows=5_000) == [((str(big), (0, 1)),), ((str(big), (2, 3)),)]
