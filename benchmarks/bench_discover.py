"""Failure discovery at audit scale, through `vbugs discover --table` as a whole process, beside
Domino's slicer (the error-aware mixture model the failure groups follow) on the same rows.

The issue's target: groups + directions + diagnosis over 100k rows x 512-d in under 60 s on the
2-core development machine. The data: unit-norm embeddings, each class a few blobs of uneven size
with elongated (non-isotropic) noise; one blob of one class fails at 70%, every other row at 5%;
a second class fails along a linear direction (logistic); losses = a linear function of the
embedding plus 2 on failures plus noise. Data generation and writing the Parquet table are not
timed; both processes' wall times include starting Python and their imports. Prints one JSON
document: seconds (vbugs per part and in all, Domino's fit and process), their ratio, and whether
each found the planted structure (a group or slice holding >= 80% of the planted blob's failures
at an error rate > 0.5, ranked first for vbugs).

Usage: python benchmarks/bench_discover.py [--rows 100000] [--dim 512] [--classes 8] [--seed 0]
       [--baseline-python .venv-domino/bin/python]   (make bench-discover builds that venv)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.preprocessing import normalize


PLANTED_CLASS, LINEAR_CLASS = "c3", "c5"


def make_data(rows: int, dim: int, n_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    names = np.array([f"c{i}" for i in range(n_classes)])
    cls = names[rng.integers(n_classes, size=rows)]
    x = np.empty((rows, dim), dtype=np.float32)
    blob = np.zeros(rows, dtype=np.int64)
    err_p = np.full(rows, 0.05)
    shape = np.linspace(0.3, 1.5, dim)[rng.permutation(dim)]  # elongated noise, like real classes
    truth = normalize(rng.normal(size=(1, dim)))[0]
    for name in names:
        idx = np.flatnonzero(cls == name)
        n_blobs = int(rng.integers(3, 7))
        centre = normalize(rng.normal(size=(1, dim)))
        means = normalize(centre + 0.6 * normalize(rng.normal(size=(n_blobs, dim))))
        lab = rng.choice(n_blobs, size=len(idx), p=rng.dirichlet(np.full(n_blobs, 4.0)))
        x[idx] = normalize(means[lab] + 0.5 / np.sqrt(dim) * rng.normal(size=(len(idx), dim)) * shape)
        blob[idx] = lab
        if name == PLANTED_CLASS:
            err_p[idx[lab == 1]] = 0.7
        if name == LINEAR_CLASS:
            s = x[idx] @ truth
            err_p[idx] = 1 / (1 + np.exp(-(-2.5 + 3.0 * (s - s.mean()) / s.std())))
    err = rng.random(rows) < err_p
    wrong = names[(np.searchsorted(names, cls) + rng.integers(1, n_classes, size=rows)) % n_classes]
    pred = np.where(err, wrong, cls)
    background = np.where(rng.random(rows) < 0.2, "snow", "grass")
    background[(cls == PLANTED_CLASS) & (blob == 1) & err] = "snow"
    w = normalize(rng.normal(size=(1, dim)))[0]
    s = x @ w
    loss = np.clip(1.0 + 2.0 * err + 0.5 * (s - s.mean()) / s.std() + 0.2 * rng.normal(size=rows), 0, None)
    return {"x": x, "err": err, "cls": cls, "pred": pred, "blob": blob, "background": background,
            "loss": loss, "truth": truth}


def write_inputs(d: dict, folder: Path) -> tuple[Path, Path]:
    """The rows as a Parquet table (for vbugs) and an .npz (for the Domino baseline)."""
    dim = d["x"].shape[1]
    table = pa.table({
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(d["x"].reshape(-1)), dim),
        "class": d["cls"], "pred": d["pred"], "error": d["err"], "loss": d["loss"], "background": d["background"],
    })
    parquet, npz = folder / "rows.parquet", folder / "rows.npz"
    pq.write_table(table, parquet)
    np.savez(npz, embeddings=d["x"], classes=d["cls"], predictions=d["pred"])
    return parquet, npz


def run_vbugs(parquet: Path, folder: Path, seed: int) -> tuple[dict, float]:
    out = folder / "discover.json"
    vbugs = Path(sys.executable).with_name("vbugs")
    t = time.perf_counter()
    subprocess.run([str(vbugs), "discover", "--table", str(parquet), "--loss-col", "loss", "--pred-col", "pred",
                    "--features", "background", "--with-rows", "--seed", str(seed), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text()), time.perf_counter() - t


def run_domino(python: str, npz: Path, top_k: int) -> tuple[dict, float]:
    t = time.perf_counter()
    done = subprocess.run([python, str(Path(__file__).with_name("domino_baseline.py")), str(npz), str(top_k)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the Domino baseline failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout), time.perf_counter() - t


def covers_planted(rows: list[int], d: dict) -> tuple[float, float]:
    """Share of the planted blob's failures among ``rows``, and the rows' error rate."""
    planted = np.flatnonzero((d["cls"] == PLANTED_CLASS) & (d["blob"] == 1))
    planted_fails = planted[d["err"][planted]]
    rows = np.asarray(rows, dtype=np.int64)
    return float(np.isin(planted_fails, rows).mean()), float(d["err"][rows].mean()) if len(rows) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-python", default=None, help="a python with domino==0.1.5 (make bench-discover)")
    args = ap.parse_args()
    d = make_data(args.rows, args.dim, args.classes, args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parquet, npz = write_inputs(d, folder)
        found, vbugs_s = run_vbugs(parquet, folder, args.seed)
        blob_size = int(((d["cls"] == PLANTED_CLASS) & (d["blob"] == 1)).sum())
        domino, domino_s = run_domino(args.baseline_python, npz, blob_size) if args.baseline_python else (None, None)

    groups, directions = found["groups"], found["directions"]
    top = next((g for g in groups if g["class_name"] == PLANTED_CLASS), None)
    coverage, _ = covers_planted(top["rows"], d) if top else (0.0, 0.0)
    linear = next((f for f in directions if f["class_name"] == LINEAR_CLASS), None)
    result = {
        "rows": args.rows, "dim": args.dim, "classes": args.classes, "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "vbugs_discover": {
            "process_seconds": round(vbugs_s, 2), "under_60s": vbugs_s < 60, "seconds": found["seconds"],
            "planted_blob_found": bool(top is not None and groups[0] is top and coverage >= 0.8
                                       and top["error_rate"] > 0.5),
            "planted_blob_failures_covered": round(coverage, 3),
            "groups": len(groups),
            "other_groups_max_lift": round(max((g["lift"] for g in groups if g is not top), default=0.0), 3),
            "directions": len(directions),
            "linear_class_auc": round(linear["auc"], 3) if linear else None,
            "other_classes_max_auc": round(max(f["auc"] for f in directions
                                               if f["class_name"] not in (LINEAR_CLASS, PLANTED_CLASS)), 3),
            "diagnosis": {k: v for k, v in found["diagnosis"].items() if k != "by_class"},
            "diagnosis_by_class_spearman": {c: round(v["spearman"], 3) for c, v in found["diagnosis"]["by_class"].items()},
        },
    }
    if domino is not None:
        def best(slices: list[list[int]]) -> tuple[float, float]:
            return max((covers_planted(rows, d) for rows in slices if rows), key=lambda cr: (cr[0] >= 0.8 and cr[1] > 0.5, cr[0]),
                       default=(0.0, 0.0))

        (cov, rate), (top_cov, top_rate) = best(domino["slices"]), best(domino["top_rows"])
        result["domino"] = {
            "process_seconds": round(domino_s, 2), "fit_seconds": round(domino["fit_seconds"], 2),
            "slices": len(domino["slices"]), "slice_sizes": [len(r) for r in domino["slices"]],
            "planted_blob_found": bool(cov >= 0.8 and rate > 0.5),
            "best_slice_planted_failures_covered": round(cov, 3), "best_slice_error_rate": round(rate, 3),
            # a reading that knows the answer's size: each slice's most likely rows, as many as the blob has
            "top_rows_of_blob_size": {"planted_blob_found": bool(top_cov >= 0.8 and top_rate > 0.5),
                                      "planted_failures_covered": round(top_cov, 3), "error_rate": round(top_rate, 3),
                                      "k": blob_size},
        }
        result["speedup_process"] = round(domino_s / vbugs_s, 2)
        result["speedup_groups_vs_domino_fit"] = round(domino["fit_seconds"] / found["seconds"]["failure_groups"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
