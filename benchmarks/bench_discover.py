"""Failure discovery at audit scale: vbugs_ray.discover on synthetic CLIP-like arrays, JSON out.

The issue's target: groups + directions + diagnosis over 100k rows x 512-d in under 60 s on the
2-core development machine. The data: unit-norm embeddings, each class a few blobs of uneven size
with elongated (non-isotropic) noise; one blob of one class fails at 70%, every other row at 5%;
a second class fails along a linear direction (logistic); losses = a linear function of the
embedding plus 2 on failures plus noise. Data generation is not timed. Prints one JSON document:
rows, dim, seconds per part and in total, and whether the planted structure was found.

Usage: python benchmarks/bench_discover.py [--rows 100000] [--dim 512] [--classes 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.preprocessing import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vbugs_ray.discover import DiagnosisEnsemble, failure_directions, failure_groups  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = make_data(args.rows, args.dim, args.classes, args.seed)

    seconds = {}
    t = time.perf_counter()
    groups = failure_groups(d["x"], d["err"], d["cls"], d["pred"], {"background": d["background"]}, seed=args.seed)
    seconds["failure_groups"] = time.perf_counter() - t
    t = time.perf_counter()
    directions = failure_directions(d["x"], d["err"], d["cls"], seed=args.seed)
    seconds["failure_directions"] = time.perf_counter() - t
    t = time.perf_counter()
    ens = DiagnosisEnsemble(seed=args.seed).fit(d["x"], d["loss"])
    seconds["diagnosis_fit"] = time.perf_counter() - t
    total = sum(seconds.values())

    planted = np.flatnonzero((d["cls"] == PLANTED_CLASS) & (d["blob"] == 1))
    planted_fails = planted[d["err"][planted]]
    top = next((g for g in groups if g.class_name == PLANTED_CLASS), None)
    coverage = float(np.isin(planted_fails, top.rows).mean()) if top is not None else 0.0
    linear = next((f for f in directions if f.class_name == LINEAR_CLASS), None)
    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "classes": args.classes, "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "seconds": {k: round(v, 2) for k, v in seconds.items()}, "total_seconds": round(total, 2),
        "under_60s": total < 60,
        "groups": {"n": len(groups), "top": groups[0].to_dict() if groups else None,
                   "planted_blob_found": bool(top is not None and groups[0] is top and coverage >= 0.8
                                              and top.error_rate > 0.5),
                   "planted_blob_failures_covered": round(coverage, 3),
                   "other_groups_max_lift": round(max((g.lift for g in groups if g is not top), default=0.0), 3)},
        "directions": {"n": len(directions),
                       "linear_class_auc": round(linear.auc, 3) if linear else None,
                       "linear_class_cosine_to_truth":
                           round(float(linear.direction @ d["truth"]), 3) if linear else None,
                       "other_classes_max_auc": round(max(f.auc for f in directions if f.class_name not in
                                                          (LINEAR_CLASS, PLANTED_CLASS)), 3)},
        "diagnosis": ens.summary(),
    }, indent=2))


if __name__ == "__main__":
    main()
