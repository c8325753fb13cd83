"""Slice search side by side: vbugs_ray vs pysubgroup vs sliceline on planted tables, JSON out.

Tables come from ../shared/bench/make_planted.py (deterministic by seed), called where it stands.
Each system runs in its own subprocess, so wall time and peak memory (the whole process tree,
Ray workers included, polled every 50 ms) are its own. Per system and size: wall time, peak RSS,
recall of the planted slices in the top 10, false flagged slices (flagged slices that share no
predicate with, or contradict, every planted slice), evaluated/lattice ratio, and the time ratio
to each baseline. A run that fails or exceeds the memory cap is recorded as a result.

The baselines pin numpy<2, so they run from their own venv (`make bench-slices` builds
.venv-bench and runs this script with it as --baseline-python).

Usage: python benchmarks/bench_slices.py [--sizes 100000,1000000] [--features 12] [--mem-gb 8]
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

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT.parent / "shared" / "bench" / "make_planted.py"
TOP = 10


# ---- workers: one system, one table, run in a fresh process -----------------------------------

def _run_vbugs(table: str, features: list[str], prune: str = "auto") -> tuple[list[dict], dict]:
    sys.path.insert(0, str(ROOT))
    from vbugs_ray.slices.settings import SearchSettings
    from vbugs_ray.table import search_table

    settings = SearchSettings(alpha=0.05, min_support=20, max_order=3, min_effect=0.2, fdr="bh", top_k=TOP, prune=prune)
    report = search_table(table, "error", None, features, settings, None)
    flagged = [s["predicates"] for s in report["flagged_slices"]]
    return flagged, {"evaluated": report["evaluated_slices"], "lattice": report["lattice_size"],
                     "n_flagged": len(flagged)}


def _run_pysubgroup(table: str, features: list[str]) -> tuple[list[dict], dict]:
    import pandas as pd
    import pysubgroup as ps

    df = pd.read_parquet(table, columns=[*features, "error"])
    df["error"] = df["error"].astype(bool)
    for f in features:
        df[f] = df[f].astype(str)
    target = ps.BinaryTarget("error", True)
    space = ps.create_selectors(df, ignore=["error"])
    task = ps.SubgroupDiscoveryTask(df, target, space, result_set_size=TOP, depth=3, qf=ps.StandardQF(0.5))
    result = ps.DFS(ps.BitSetRepresentation).execute(task)
    flagged = [{sel.attribute_name: str(sel.attribute_value) for sel in desc.selectors}
               for _, desc, *_ in result.results]
    return flagged, {"n_flagged": len(flagged)}


def _run_sliceline(table: str, features: list[str]) -> tuple[list[dict], dict]:
    import numpy as np
    import pandas as pd
    from sliceline.slicefinder import Slicefinder

    df = pd.read_parquet(table, columns=[*features, "error"])
    x = df[features].astype(str).to_numpy()
    errors = df["error"].to_numpy().astype(np.float64)  # an int vector overflows silently
    finder = Slicefinder(alpha=0.99, k=TOP, max_l=3, min_sup=20, verbose=False)
    finder.fit(x, errors)
    flagged = [{f: str(v) for f, v in zip(features, row) if v is not None} for row in finder.top_slices_]
    return flagged, {"n_flagged": len(flagged)}


WORKERS = {"vbugs_ray": _run_vbugs,  # the default: prune="auto" (elevated from 1M rows, exact below)
           "vbugs_ray_elevated": lambda table, features: _run_vbugs(table, features, prune="elevated"),
           "vbugs_ray_exact": lambda table, features: _run_vbugs(table, features, prune="exact"),
           "pysubgroup": _run_pysubgroup, "sliceline": _run_sliceline}


def worker(system: str, table: str, features: list[str], mem_gb: float) -> None:
    if not system.startswith("vbugs_ray"):  # Ray reserves virtual memory it never touches; cap the others
        import resource

        cap = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    t0 = time.perf_counter()
    flagged, extra = WORKERS[system](table, features)
    print(json.dumps({"flagged": flagged, "search_s": time.perf_counter() - t0, **extra}))


# ---- driver ----------------------------------------------------------------------------------

def _tree_rss(proc) -> int:
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_system(system: str, table: str, features: list[str], mem_gb: float, timeout_s: float,
               python: str) -> dict:
    import psutil

    cmd = [python, __file__, "--worker", system, "--table", table, "--features", ",".join(features),
           "--mem-gb", str(mem_gb)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(watched))
        if time.perf_counter() - t0 > timeout_s:
            for child in watched.children(recursive=True):
                child.kill()
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    record = {"system": system, "wall_s": round(wall, 2), "peak_rss_gb": round(peak / 2**30, 3)}
    if proc.returncode != 0 or not out.strip():
        reason = "timeout" if wall > timeout_s else (err.strip().splitlines() or ["failed"])[-1][:300]
        record.update(status="failed", error=reason)
        return record
    result = json.loads(out.strip().splitlines()[-1])
    record.update(status="ok", search_s=round(result.pop("search_s"), 2), flagged_top=result.pop("flagged")[:TOP], **result)
    return record


def _related(pred: dict, planted: dict) -> bool:
    return any(k in pred for k in planted) and all(pred[k] == v for k, v in planted.items() if k in pred)


def score(record: dict, planted: list[dict]) -> None:
    if record["status"] != "ok":
        return
    top = record["flagged_top"]
    record["recall_top10"] = sum(p in top for p in planted) / len(planted)
    record["false_flagged_top10"] = sum(not any(_related(s, p) for p in planted) for s in top)
    if "evaluated" in record:
        record["evaluated_over_lattice"] = round(record["evaluated"] / record["lattice"], 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--table")
    parser.add_argument("--features", default="")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--n-features", type=int, default=12)
    parser.add_argument("--systems", default="vbugs_ray,vbugs_ray_elevated,vbugs_ray_exact,pysubgroup,sliceline")
    parser.add_argument("--baseline-max-rows", type=int, default=1_000_000, help="largest table given to baselines")
    parser.add_argument("--mem-gb", type=float, default=8.0)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-python", default=str(ROOT / ".venv-bench" / "bin" / "python"),
                        help="interpreter with pysubgroup and sliceline (they need numpy<2): `make bench-slices`")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.table, args.features.split(","), args.mem_gb)
        return
    if not GENERATOR.exists():
        sys.exit(f"bench_slices: the table generator is missing at {GENERATOR}")

    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in [int(s) for s in args.sizes.split(",")]:
            table, truth = Path(tmp) / f"planted_{rows}.parquet", Path(tmp) / f"planted_{rows}.json"
            subprocess.run([sys.executable, str(GENERATOR), "--rows", str(rows), "--features", str(args.n_features),
                            "--seed", str(args.seed), "--out", str(table), "--truth", str(truth)],
                           check=True, capture_output=True)
            planted = [{k: str(v) for k, v in s["predicates"].items()} for s in json.loads(truth.read_text())["slices"]]
            features = [f"f{i}" for i in range(args.n_features)]
            by_system = {}
            for system in args.systems.split(","):
                if not system.startswith("vbugs_ray") and rows > args.baseline_max_rows:
                    continue
                python = sys.executable if system.startswith("vbugs_ray") else args.baseline_python
                record = run_system(system, str(table), features, args.mem_gb, args.timeout_s, python)
                record.update(rows=rows, features=args.n_features, max_order=3)
                score(record, planted)
                by_system[system] = record
                records.append(record)
                print(f"{system} @ {rows}: {record['status']} {record['wall_s']}s", file=sys.stderr, flush=True)
            ours = by_system.get("vbugs_ray")
            if ours and ours["status"] == "ok":
                for name, other in by_system.items():
                    if name != "vbugs_ray" and other["status"] == "ok":
                        ours[f"speedup_vs_{name}"] = round(other["wall_s"] / ours["wall_s"], 2)
    print(json.dumps({"benchmark": "slices", "cpu_count": os.cpu_count(), "records": records}, indent=2))


if __name__ == "__main__":
    main()
