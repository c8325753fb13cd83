"""Find and prove on the toy world: do planted bugs come out of `vbugs audit` as verified bugs?

Each suite plants three bugs on three different classes, one of each kind the toy classifier
knows: an under-representation (`keep: 0.0`), a spurious correlation (`strength: 0.97`) and a
mislabelled subgroup (`relabel`, `share: 0.9`). At least one bug per suite lives on a renderer
property that is not an axis of the audit spec (size, clutter), so only discovery from the images
can find it. Each suite runs `vbugs audit` as a whole process (training the classifier, generating,
scoring, embedding, slice search, discovery, verification with `replicate: true`) and is scored
from its report.json and rows:

- **took**: does the classifier really fail where the bug acts? On the audit's own valid rows
  (every property recovered from prompt and seed, as the renderer draws it): error rate of the
  class's rows where the bug acts vs the class's other rows, one-sided Fisher p < 0.001. A bug
  the classifier shrugged off (it generalised across a missing cell) has nothing to find.
- **found**: some verified bug's description (its named hypothesis: class, axis predicates and
  phrases read back into renderer properties) expresses the planted bug:
  under-representation / mislabelled subgroup `where W`: the description contains W;
  spurious correlation `class C, spurious a=v`: the description is about C and does not say a=v.
- **diagnosis rank**: for a bug whose `where` names a non-axis property, the rank of that
  property's phrase in its class's vocabulary ranking by the diagnosis ensemble (1 = top).

Recall is reported among verified bugs, per kind and for axis vs non-axis bugs, over the bugs
that took. A control audit of a classifier trained with no planted bug reports how many bugs
verify and how many replicate on a second fresh sample.

Prints one JSON document (also written to --json). Runs are kept under --workdir when given, and
an interrupted benchmark resumes there (the audit is resumable).
Usage: python benchmarks/bench_discovery.py [--suites 8] [--workdir DIR] [--executor local]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import fisher_exact

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vbugs_ray.spec import DEFAULT_SPEC  # noqa: E402
from vbugs_ray.store import RunStore  # noqa: E402
from vbugs_ray.toyworld import renderer  # noqa: E402

KINDS = ("under_representation", "spurious_correlation", "mislabelled_subgroup")
TOOK_P = 1e-3


def kind_of(bug: dict) -> str:
    return "under_representation" if "keep" in bug else "mislabelled_subgroup" if "relabel" in bug \
        else "spurious_correlation"


def open_properties(spec_dict: dict) -> list[str]:
    """Renderer properties the spec's axes leave open: where no slice can look."""
    return [p for p in renderer.PROPERTIES if p != "class" and p not in spec_dict["axes"]]


def draw_suite(spec_dict: dict, rng: np.random.Generator) -> list[dict]:
    """One bug of each kind on three different classes; at least one on a non-axis property."""
    classes = list(spec_dict["classes"])
    axes, hidden = sorted(spec_dict["axes"]), open_properties(spec_dict)
    c_under, c_spur, c_label = (str(c) for c in rng.choice(classes, 3, replace=False))

    def pick(props: list[str]) -> tuple[str, str]:
        prop = str(rng.choice(props))
        values = list(spec_dict["axes"][prop]) if prop in spec_dict["axes"] else list(renderer.VOCABULARY[prop])
        return prop, str(rng.choice(values))

    under, label = pick(axes + hidden), pick(axes + hidden)
    if under[0] not in hidden and label[0] not in hidden:
        forced = pick(hidden)
        under, label = (forced, label) if rng.random() < 0.5 else (under, forced)
    spur = pick(axes)
    relabel = str(rng.choice([c for c in classes if c != c_label]))
    return [
        {"where": {"class": c_under, under[0]: under[1]}, "keep": 0.0},
        {"where": {"class": c_spur}, "spurious": {spur[0]: spur[1]}, "strength": 0.97},
        {"where": {"class": c_label, label[0]: label[1]}, "relabel": relabel, "share": 0.9},
    ]


def acts_on(props: dict, bug: dict) -> bool:
    """Does the bug act on an image with these (complete) properties?"""
    if not all(props.get(k) == v for k, v in bug["where"].items()):
        return False
    if "spurious" in bug:
        (prop, value), = bug["spurious"].items()
        return props[prop] != value
    return True


def run_properties(run_dir: Path) -> tuple[list[dict], np.ndarray]:
    """Every valid row's full renderer properties (from its prompt and seed) and its error."""
    table = RunStore(run_dir).read_valid(columns=["prompt", "seed", "error"])
    prompts = table.column("prompt").to_pylist()
    seeds = table.column("seed").to_pylist()
    props = [renderer.complete_properties(renderer.parse_prompt(p), s) for p, s in zip(prompts, seeds)]
    return props, table.column("error").to_numpy(zero_copy_only=False).astype(bool)


def took(props: list[dict], errors: np.ndarray, bug: dict) -> dict:
    """Error where the bug acts vs the same class's other rows (null: no higher; one-sided)."""
    cls = bug["where"]["class"]
    in_class = np.array([p["class"] == cls for p in props])
    inside = np.array([acts_on(p, bug) for p in props])
    outside = in_class & ~inside
    k_in, n_in = int(errors[inside].sum()), int(inside.sum())
    k_out, n_out = int(errors[outside].sum()), int(outside.sum())
    p = fisher_exact([[k_in, n_in - k_in], [k_out, n_out - k_out]], alternative="greater").pvalue
    return {"error_where_it_acts": round(k_in / max(n_in, 1), 4), "error_rest_of_class": round(k_out / max(n_out, 1), 4),
            "n_where_it_acts": n_in, "p_value": float(p), "took": bool(p < TOOK_P)}


def described_properties(bug: dict, hypotheses: dict[str, dict]) -> dict:
    """The renderer properties a verified bug's description names (axis predicates + phrases)."""
    h = hypotheses[bug["hypothesis"]]
    props = dict(renderer.parse_prompt(", ".join(h["phrases"])))
    props.update(h["predicates"])
    props["class"] = h["class"]
    return props


def expresses(described: dict, planted: dict) -> bool:
    if described.get("class") != planted["where"]["class"]:
        return False
    if "spurious" in planted:
        (prop, value), = planted["spurious"].items()
        return described.get(prop) != value
    return all(described.get(k) == v for k, v in planted["where"].items())


def hidden_property(bug: dict, hidden: list[str]) -> tuple[str, str] | None:
    found = [(k, v) for k, v in bug["where"].items() if k in hidden]
    return found[0] if found else None


def diagnosis_rank(report: dict, bug: dict, hidden: list[str]) -> int | None:
    """Rank (1 = top) of the bug's non-axis property among its class's ranked phrases; None if
    it is past the ranking's end (report keeps the top 10 per class)."""
    prop_value = hidden_property(bug, hidden)
    ranked = report["discovery"]["vocabulary_ranking_by_class"].get(bug["where"]["class"], [])
    for rank, item in enumerate(ranked, 1):
        if prop_value and renderer.parse_prompt(item["phrase"]).get(prop_value[0]) == prop_value[1]:
            return rank
    return None


def audit(spec_dict: dict, run_dir: Path, executor: str) -> tuple[dict, float]:
    """`vbugs audit` as a user runs it, in its own process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir.parent / f"{run_dir.name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    vbugs = Path(sys.executable).with_name("vbugs")
    t0 = time.time()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run([str(vbugs), "audit", str(spec_path), "--out", str(run_dir), "--executor", executor],
                       check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads((run_dir / "report.json").read_text()), time.time() - t0


def score_suite(spec_dict: dict, bugs: list[dict], seed: int, executor: str, workdir: Path) -> dict:
    spec_dict = copy.deepcopy(spec_dict)
    spec_dict.update(seed=seed, verify={**(spec_dict.get("verify") or {}), "replicate": True})
    spec_dict["classifier"]["options"].update(bugs=bugs, seed=seed)
    run_dir = workdir / (f"suite-{seed}" if bugs else "control")
    report, wall = audit(spec_dict, run_dir, executor)
    hidden = open_properties(spec_dict)
    props, errors = run_properties(run_dir)
    hypotheses = {h["key"]: h for h in report["hypotheses"]}
    verified = report["verified_bugs"]
    described = [described_properties(b, hypotheses) for b in verified]
    planted = []
    for bug in bugs:
        rank = next((i for i, d in enumerate(described, 1) if expresses(d, bug)), None)
        planted.append({
            "bug": bug, "kind": kind_of(bug), "non_axis": hidden_property(bug, hidden) is not None,
            **took(props, errors, bug), "verified_rank": rank,
            "replicated": verified[rank - 1]["replication"]["replicated"] if rank else None,
            "diagnosis_rank": diagnosis_rank(report, bug, hidden) if hidden_property(bug, hidden) else None,
        })
    explained = {p["verified_rank"] for p in planted if p["verified_rank"]}
    return {
        "seed": seed, "planted": planted, "wall_s": round(wall, 1),
        "verified_bugs": [{"description": b["description"], "error_rate": round(b["error_rate"], 3),
                           "base_error_rate": round(b["base_error_rate"], 3), "q_value": b["q_value"],
                           "replicated": b["replication"]["replicated"], "sources": b["sources"]} for b in verified],
        "verified_not_planted": [b["description"] for i, b in enumerate(verified, 1) if i not in explained],
        "images_audited": report["n_images"],
        "images_generated_verifying": report["verification"]["images_generated"],
        "diagnosis_spearman": report["discovery"]["diagnosis"].get("spearman"),
    }


def recall(items: list[dict]) -> dict:
    took_ = [p for p in items if p["took"]]
    found = [p for p in took_ if p["verified_rank"]]
    return {"planted": len(items), "took": len(took_), "take_rate": len(took_) / len(items) if items else None,
            "verified": len(found), "recall_of_bugs_that_took": len(found) / len(took_) if took_ else None,
            "verified_all_planted": sum(bool(p["verified_rank"]) for p in items)}


def summarise(suites: list[dict], control: dict | None, spec_dict: dict) -> dict:
    planted = [p for s in suites for p in s["planted"]]
    hidden_ranks = [p["diagnosis_rank"] for p in planted if p["non_axis"] and p["took"]]
    found = [p for p in planted if p["verified_rank"]]
    n_verified = sum(len(s["verified_bugs"]) for s in suites)
    generated = sum(s["images_generated_verifying"] for s in suites)
    return {
        "benchmark": "discovery",
        "suites": len(suites),
        "images_per_audit": spec_dict["budget"],
        "by_kind": {kind: recall([p for p in planted if p["kind"] == kind]) for kind in KINDS},
        "axis_bugs": recall([p for p in planted if not p["non_axis"]]),
        "non_axis_bugs": recall([p for p in planted if p["non_axis"]]),
        "all_bugs": recall(planted),
        "planted_verified_that_replicated": sum(bool(p["replicated"]) for p in found),
        "verified_bugs": n_verified,
        "verified_bugs_not_planted": sum(len(s["verified_not_planted"]) for s in suites),
        "images_generated_verifying": generated,
        "images_generated_per_verified_bug": generated / n_verified if n_verified else None,
        "diagnosis": {
            "non_axis_bugs_that_took": len(hidden_ranks),
            "phrase_in_top_5": sum(r is not None and r <= 5 for r in hidden_ranks),
            "ranks": hidden_ranks,
            "held_out_spearman": [s["diagnosis_spearman"] for s in suites],
        },
        "control_no_planted_bug": None if control is None else {
            "verified_bugs": len(control["verified_bugs"]),
            "replicated_on_second_fresh_sample": sum(b["replicated"] for b in control["verified_bugs"]),
            "bugs": control["verified_bugs"],
        },
        "wall_s_per_suite": [s["wall_s"] for s in suites],
        "runs": suites,
        "control": control,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--budget", type=int, default=None, help="images per audit (default: the spec's)")
    parser.add_argument("--no-control", action="store_true", help="skip the bug-free control audit")
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and resume) runs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    spec_dict = yaml.safe_load(DEFAULT_SPEC.read_text())
    if args.budget:
        spec_dict["budget"] = args.budget
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        suites = []
        for seed in range(args.first_seed, args.first_seed + args.suites):
            bugs = draw_suite(spec_dict, np.random.default_rng([seed, 909]))
            suites.append(score_suite(spec_dict, bugs, seed, args.executor, workdir))
            print(f"suite {seed}: " + "; ".join(
                f"{p['kind']} {p['bug']['where']} took={p['took']} verified_rank={p['verified_rank']}"
                for p in suites[-1]["planted"]) + f" ({suites[-1]['wall_s']}s)", file=sys.stderr, flush=True)
        control = None if args.no_control else score_suite(spec_dict, [], 0, args.executor, workdir)
    result = json.dumps(summarise(suites, control, spec_dict), indent=2)
    if args.json:
        args.json.write_text(result)
    print(result)


if __name__ == "__main__":
    main()
