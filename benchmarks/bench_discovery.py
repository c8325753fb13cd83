"""Discovery quality on the toy world: recall of planted bugs, and flags on a bug-free model.

For each seed, a random bug suite is drawn over the spec's classes and axes (one
under-representation bug and one spurious correlation, on different classes), a classifier is
trained with it, the audit runs, and each planted bug counts as found if a slice that expresses it
is among the top-k flagged slices. A control classifier trained with no planted bug shows what
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


def run_one(spec_dict: dict, bugs: list[dict], seed: int, top_k: int, executor: str, workdir: Path) -> dict:
    spec_dict = copy.deepcopy(spec_dict)
    spec_dict["seed"] = seed
    spec_dict["classifier"]["options"]["bugs"] = bugs
    spec_dict["classifier"]["options"]["seed"] = seed
    spec_dict["run"]["executor"] = executor
    spec = parse_spec(spec_dict)
    t0 = time.time()
    report = audit(spec, workdir / f"seed{seed}-{len(bugs)}bugs", progress=lambda _: None)
    top = report["flagged_slices"][:top_k]
    found = [next((rank for rank, s in enumerate(top, 1) if expresses(s["predicates"], b)), None) for b in bugs]
    return {
        "seed": seed,
        "bugs": bugs,
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
    print(json.dumps({
        "benchmark": "discovery",
        "top_k": args.top_k,
        "images_per_audit": spec_dict["budget"],
        "recall_top_k": found / planted,
        "planted_bugs": planted,
        "found_bugs": found,
        "control_no_bug_flagged_slices": control["n_flagged"],
        "control": control,
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
