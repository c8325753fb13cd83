"""Discovery quality on the toy world: recall of planted bugs, and flags on a bug-free model.

For each seed, a random bug suite is drawn over the spec's classes and axes (one
under-representation bug and one spurious correlation, on different classes), a classifier is
trained with it, the audit runs, and each planted bug counts as found if a slice that expresses it
is among the top-k flagged slices. Each bug also records whether it *took*: the classifier's error rate where the bug acts
against elsewhere (one-sided Fisher p < 0.001), so that a bug the model shrugged off (it
generalised across the missing combination) is told apart from a bug the audit missed.
A control classifier trained with no planted bug shows what
the audit flags when nothing was planted (the model's own, unplanted weaknesses).

A flagged slice expresses a bug when (predicates as a set of axis=value pairs):
- under-representation ``where W``: the slice contains W (W itself or a refinement of it);
- spurious correlation ``where W, spurious a=v``: the slice contains W and has a != v or no a
  (the bug's images away from v), or it has a=v and a class other than W's (v pulls other classes).

Prints one JSON document. Usage: python benchmarks/bench_discovery.py [--seeds 5] [--top-k 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vbugs_ray.audit import audit  # noqa: E402
from vbugs_ray.spec import DEFAULT_SPEC, parse_spec  # noqa: E402
from vbugs_ray.store import RunStore  # noqa: E402


def draw_bugs(spec_dict: dict, rng: np.random.Generator) -> list[dict]:
    classes = list(spec_dict["classes"])
    axes = {name: list(values) for name, values in spec_dict["axes"].items()}
    names = sorted(axes)
    c_under, c_spur = rng.choice(classes, 2, replace=False)
    a_under, a_spur = str(rng.choice(names)), str(rng.choice(names))
    return [
        {"where": {"class": str(c_under), a_under: str(rng.choice(axes[a_under]))}, "keep": 0.0},
        {"where": {"class": str(c_spur)}, "spurious": {a_spur: str(rng.choice(axes[a_spur]))}, "strength": 0.97},
    ]


def expresses(predicates: dict, bug: dict) -> bool:
    where = bug["where"]
    contains_where = all(predicates.get(k) == v for k, v in where.items())
    if "keep" in bug:
        return contains_where
    (axis, value), = bug["spurious"].items()
    if contains_where and predicates.get(axis) != value:
        return True
    other_class = predicates.get("class") not in (None, where.get("class"))
    return predicates.get(axis) == value and other_class


def _where_error_rate(rows: dict, bug: dict) -> dict:
    """Did the planted bug take? Error rate where it acts vs elsewhere, and Fisher's one-sided p.
    (For a spurious correlation it acts on the class away from the spurious value.)"""
    from scipy.stats import fisher_exact

    inside = np.ones(len(rows["error"]), bool)
    for k, v in bug["where"].items():
        inside &= np.asarray(rows[k]) == v
    if "spurious" in bug:
        (axis, value), = bug["spurious"].items()
        inside &= np.asarray(rows[axis]) != value
    err = np.asarray(rows["error"], bool)
    k_in, n_in, k_out, n_out = int(err[inside].sum()), int(inside.sum()), int(err[~inside].sum()), int((~inside).sum())
    p = fisher_exact([[k_in, n_in - k_in], [k_out, n_out - k_out]], alternative="greater").pvalue
    return {"inside": round(k_in / max(n_in, 1), 4), "elsewhere": round(k_out / max(n_out, 1), 4),
            "n_inside": n_in, "p_value": float(p), "took": bool(p < 0.001)}


def run_one(spec_dict: dict, bugs: list[dict], seed: int, top_k: int, executor: str, workdir: Path) -> dict:
    spec_dict = copy.deepcopy(spec_dict)
    spec_dict["seed"] = seed
    spec_dict["classifier"]["options"]["bugs"] = bugs
    spec_dict["classifier"]["options"]["seed"] = seed
    spec_dict["run"]["executor"] = executor
    spec = parse_spec(spec_dict)
    t0 = time.time()
    run_dir = workdir / f"seed{seed}-{len(bugs)}bugs"
    report = audit(spec, run_dir, progress=lambda _: None)
    top = report["flagged_slices"][:top_k]
    rows = RunStore(run_dir).read(columns=["class", *spec.axis_names, "error"]).to_pydict()
    found = [next((rank for rank, s in enumerate(top, 1) if expresses(s["predicates"], b)), None) for b in bugs]
    return {
        "seed": seed,
        "bugs": bugs,
        "bug_error_rates": [_where_error_rate(rows, b) for b in bugs],
        "found_at_rank": found,
        "recall_top_k": (sum(r is not None for r in found) / len(bugs)) if bugs else None,
        "n_flagged": len(report["flagged_slices"]),
        "base_error_rate": report["base_error_rate"],
        "top_slices": [{"predicates": s["predicates"], "error_rate": round(s["error_rate"], 3),
                        "q_value": s["q_value"]} for s in top],
        "wall_s": round(time.time() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--budget", type=int, default=None, help="images per audit (default: the spec's)")
    args = parser.parse_args()

    spec_dict = yaml.safe_load(DEFAULT_SPEC.read_text())
    if args.budget:
        spec_dict["budget"] = args.budget
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        runs = []
        for seed in range(1, args.seeds + 1):
            bugs = draw_bugs(spec_dict, np.random.default_rng([seed, 555]))
            runs.append(run_one(spec_dict, bugs, seed, args.top_k, args.executor, workdir))
            print(f"seed {seed}: found at ranks {runs[-1]['found_at_rank']}", file=sys.stderr, flush=True)
        control = run_one(spec_dict, [], 0, args.top_k, args.executor, workdir)
    planted = sum(len(r["bugs"]) for r in runs)
    found = sum(sum(x is not None for x in r["found_at_rank"]) for r in runs)
    took = [(rank, rate["took"]) for r in runs for rank, rate in zip(r["found_at_rank"], r["bug_error_rates"])]
    effective = sum(t for _, t in took)
    by_kind = {}
    for r in runs:
        for bug, rank in zip(r["bugs"], r["found_at_rank"]):
            kind = "under_representation" if "keep" in bug else "spurious_correlation"
            entry = by_kind.setdefault(kind, {"planted": 0, "found": 0})
            entry["planted"] += 1
            entry["found"] += rank is not None
    print(json.dumps({
        "benchmark": "discovery",
        "top_k": args.top_k,
        "images_per_audit": spec_dict["budget"],
        "recall_top_k": found / planted,
        "planted_bugs": planted,
        "found_bugs": found,
        "bugs_that_took": effective,
        "recall_top_k_of_bugs_that_took": (sum(rank is not None for rank, t in took if t) / effective) if effective else None,
        "by_kind": by_kind,
        "control_no_bug_flagged_slices": control["n_flagged"],
        "control": control,
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
