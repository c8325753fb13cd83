"""`vbugs discover --table`: discovery on any Parquet table of embeddings and errors, and its
one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import normalize


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def planted_table(tmp_path_factory):
    """Two classes in two blobs each; blob 1 of class b fails at 70%, everything else at 4%.
    Losses rise with failures and along a direction. Rows of the failing blob are shown on snow."""
    rng = np.random.default_rng(3)
    n, dim = 3000, 24
    cls = np.where(rng.random(n) < 0.5, "a", "b")
    blob = (rng.random(n) < 0.3).astype(int)
    centres = normalize(rng.normal(size=(4, dim)))
    x = normalize(centres[(cls == "b") * 2 + blob] + 0.15 * rng.normal(size=(n, dim))).astype(np.float32)
    planted = (cls == "b") & (blob == 1)
    err = rng.random(n) < np.where(planted, 0.7, 0.04)
    loss = 1.0 + 2.0 * err + 0.5 * (x @ normalize(rng.normal(size=(1, dim)))[0]) + 0.1 * rng.normal(size=n)
    path = tmp_path_factory.mktemp("table") / "rows.parquet"
    pq.write_table(pa.table({
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        "ragged": pa.array([[0.0] * (1 + i % 2) for i in range(n)], pa.list_(pa.float32())),
        "class": cls, "pred": np.where(err, np.where(cls == "a", "b", "a"), cls), "error": err, "loss": loss,
        "background": np.where(planted, "snow", "grass"),
    }), path)
    return path, planted, err


@pytest.mark.cli
def test_discover_table_finds_the_failing_blob(planted_table, tmp_path):
    path, planted, err = planted_table
    out = tmp_path / "found.json"
    done = _vbugs("discover", "--table", str(path), "--loss-col", "loss", "--pred-col", "pred",
                  "--features", "background", "--with-rows", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout) and report["rows"] == 3000 and report["dim"] == 24
    top = report["groups"][0]
    assert top["class_name"] == "b" and top["error_rate"] > 0.5
    rows = np.asarray(top["rows"])
    assert np.isin(np.flatnonzero(planted & err), rows).mean() >= 0.8  # the group holds the blob's failures
    assert top["overlaps"]["background"]["snow"] > 0.8 and top["top_wrong"][0][0] == "a"
    direction = next(d for d in report["directions"] if d["class_name"] == "b")
    assert direction["auc"] > 0.75 and len(direction["rows"]) == direction["n_rows"]
    diagnosis = report["diagnosis"]
    assert diagnosis["spearman"] > 0.3 and set(diagnosis["by_class"]) == {"a", "b"}
    # without a loss column there is no diagnosis; without a class column one class "all"
    done = _vbugs("discover", "--table", str(path), "--class-col", "")
    assert done.returncode == 0, done.stderr[-2000:]
    bare = json.loads(done.stdout)
    assert bare["diagnosis"] is None and {g["class_name"] for g in bare["groups"]} <= {"all"}


@pytest.mark.cli
def test_discover_table_errors_are_one_line(planted_table, tmp_path):
    path, *_ = planted_table
    cases = [
        (("--error-col", "wrong"), f"vbugs: error: --error-col 'wrong' is not a column of {path}; columns: "
                                   "embedding, ragged, class, pred, error, loss, background"),
        (("--embedding-col", "class"), "vbugs: error: --embedding-col 'class' must hold a list of floats per row; "
                                       "it holds string"),
        (("--embedding-col", "ragged"), "vbugs: error: --embedding-col 'ragged': every row needs an embedding of "
                                        "one length; found lengths [1, 2]"),
        (("--error-col", "loss"), "vbugs: error: --error-col 'loss' must be 0/1 or true/false in every row"),
        (("--features", "background,sky"), f"vbugs: error: --features 'sky' is not a column of {path}; columns: "
                                            "embedding, ragged, class, pred, error, loss, background"),
    ]
    for flags, message in cases:
        done = _vbugs("discover", "--table", str(path), *flags)
        assert done.returncode == 2, (flags, done.stderr[-1000:])
        assert done.stderr.strip().splitlines() == [message], flags
    done = _vbugs("discover", "--table", str(tmp_path / "none.parquet"))
    assert done.returncode == 2 and "no Parquet file or directory" in done.stderr
