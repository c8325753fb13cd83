"""Verification end to end: on a local Ray (fresh rows through the same stages, resumable), and
the shuffled-label control (a classifier blind to the images verifies nothing beyond alpha)."""

import json
import shutil

import pyarrow.dataset as pads
import pytest
from scipy.stats import binom

from vbugs_ray.flow import audit, find_slices
from vbugs_ray.spec import parse_spec
from vbugs_ray.store import RunStore


def _verify_spec(spec_dict, budget, executor, verify):
    spec_dict["budget"] = budget
    spec_dict["verify"] = verify
    spec_dict["run"] = {"executor": executor, "shard_rows": 100_000}
    return spec_dict


@pytest.mark.ray
@pytest.mark.trains
def test_verification_on_ray_finds_the_planted_bug_and_resumes(spec_dict, ray_session, tmp_path):
    spec = parse_spec(_verify_spec(spec_dict, 1440, "ray",
                                   {"images_per_hypothesis": 60, "max_hypotheses": 4, "rounds": 2,
                                    "replicate": True}))
    run_dir = tmp_path / "run"
    report = audit(spec, run_dir, progress=lambda _: None)

    bugs = report["verified_bugs"]
    assert any(b["class"] == "star" and "at night" in b["description"] for b in bugs), bugs
    info = report["verification"]
    assert info["rounds_run"] == 2 and info["alpha_per_round"] == pytest.approx(0.025)
    folder = next((run_dir / "verify").iterdir())
    files = sorted(str(p) for p in folder.glob("*/rows/shard-*/*.parquet") if "counterfactual" not in p.parts)
    fresh = pads.dataset(files, format="parquet").to_table(
        columns=["row_id", "seed", "hypothesis", "arm", "error", "valid"])
    # the counterfactuals: failing images made again under their own seeds, the description changed
    pairs = pads.dataset(sorted(str(p) for p in folder.glob("counterfactual/rows/shard-*/*.parquet")),
                         format="parquet").to_table(columns=["row_id", "seed", "pair_of"]).to_pylist()
    assert pairs and fresh.num_rows + len(pairs) == info["images_generated"]  # rounds, replication, pairs
    seed_of = dict(zip(fresh.column("row_id").to_pylist(), fresh.column("seed").to_pylist()))
    assert all(seed_of[r["pair_of"]] == r["seed"] for r in pairs)
    assert min(r["row_id"] for r in pairs) > max(seed_of)  # ids after the rounds' and the replication's
    grid = RunStore(run_dir).read(columns=["row_id", "seed"])
    assert not set(fresh.column("seed").to_pylist()) & set(grid.column("seed").to_pylist())
    assert len(set(fresh.column("seed").to_pylist())) == fresh.num_rows
    assert min(fresh.column("row_id").to_pylist()) == grid.num_rows  # ids continue after the grid's
    by_id = {r["row_id"]: r for r in fresh.to_pylist()}
    tested = {h["key"]: h for h in report["hypotheses"]}
    replication = pads.dataset(sorted(str(p) for p in folder.glob("replication/rows/shard-*/*.parquet")),
                               format="parquet").to_table(columns=["row_id", "hypothesis", "error", "valid"]).to_pylist()
    for bug in bugs:
        rows = [by_id[i] for i in bug["row_ids"]]
        assert {r["hypothesis"] for r in rows} == {bug["hypothesis"]} and all(r["valid"] for r in rows)
        assert sum(r["error"] for r in rows) == bug["errors"] and tested[bug["hypothesis"]]["verdict"] == "verified"
        # the second fresh sample: its own rows (ids never the round's), counted the same way
        again = [r for r in replication if r["hypothesis"] == bug["hypothesis"] and r["valid"]]
        assert not {r["row_id"] for r in again} & set(bug["row_ids"])
        assert bug["replication"]["n"] == len(again) and bug["replication"]["errors"] == sum(r["error"] for r in again)
    star = next(b for b in bugs if b["class"] == "star" and "at night" in b["description"])
    assert star["replication"]["replicated"] and star["replication"]["q_value"] <= 0.05
    assert info["replicated"] == sum(b["replication"]["replicated"] for b in bugs)

    # re-running the slice search alone keeps the verified bugs it fed; other settings drop them
    find_slices(run_dir, spec.to_dict(), progress=lambda _: None, caption=False)
    assert json.loads((run_dir / "report.json").read_text())["verified_bugs"] == bugs
    messages = []
    other = spec.to_dict()
    other["search"]["alpha"] = 0.01
    find_slices(run_dir, other, progress=messages.append, caption=False)
    assert "verified_bugs" not in json.loads((run_dir / "report.json").read_text())
    assert any("vbugs verify RUN_DIR" in m for m in messages)

    # an interrupted verification resumes with the missing shard only, to the same verdicts
    shutil.rmtree(folder / "round-2" / "rows" / "shard-00000")
    messages = []
    again = audit(spec, run_dir, progress=messages.append)
    assert [m for m in messages if "written" in m] == ["verify round 2: shard 1/1 written "
                                                       f"({json.loads((folder / 'round-2' / 'plan.json').read_text())['rows']} rows)"]
    assert again["verified_bugs"] == bugs

    # a round's shard with a file cut short is named, set aside and written again, to the same verdicts
    part = next((folder / "round-1" / "rows" / "shard-00000").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:-100])
    messages = []
    again = audit(spec, run_dir, progress=messages.append)
    assert [m for m in messages if "generating it again" in m and "round-1/rows/shard-00000" in m], messages
    assert [m.split(" (")[0] for m in messages if m.endswith("rows)")] == ["verify round 1: shard 1/1 written"]
    assert again["verified_bugs"] == bugs

    # a replication planned for other bugs (a release that merged the same rounds differently)
    # is planned again, not judged on arms it does not hold
    plan = folder / "replication" / "plan.json"
    stale = json.loads(plan.read_text())
    plan.write_text(json.dumps({**stale, "bugs": stale["bugs"][:1] + ["h-another-bug"]}))
    messages = []
    again = audit(spec, run_dir, progress=messages.append)
    assert any("planning again" in m for m in messages)
    assert json.loads(plan.read_text())["bugs"] == [b["hypothesis"] for b in bugs]
    assert again["verified_bugs"] == bugs


def _blind_spec(spec_dict, seed):
    spec_dict = _verify_spec(spec_dict, 288, "local",
                             {"images_per_hypothesis": 40, "max_hypotheses": 5, "rounds": 2, "min_errors": 5})
    spec_dict["seed"] = seed
    spec_dict["classifier"] = {"backend": "module", "batch_size": 256, "options": {
        "callable": "vbugs_ray.tiny:ImageBlind", "kwargs": {"num_classes": 6, "seed": seed},
        "preprocess": {"size": 32, "resize": 32, "crop_pct": 1.0, "interpolation": "bilinear",
                       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "class_map": {c: i for i, c in enumerate(spec_dict["classes"])}}}
    return parse_spec(spec_dict)


@pytest.mark.trains
@pytest.mark.timeout(600)
def test_shuffled_label_control_verifies_nothing_beyond_alpha(default_spec_dict, tmp_path):
    """Null: the classifier's predictions are independent of the images, so no description raises
    its error rate. Over 20 seeded audits (slices, clusters, directions and the diagnosis ensemble
    all propose hypotheses from noise), the number of audits with any verified bug stays within
    binomial error of alpha = 0.05: at most 3 of 20 (P(X >= 4) = 0.016 at the nominal level)."""
    import copy

    seeds, alpha = 20, 0.05
    with_bugs, tested = [], 0
    for seed in range(1, seeds + 1):
        spec = _blind_spec(copy.deepcopy(default_spec_dict), seed)
        report = audit(spec, tmp_path / f"seed{seed}", progress=lambda _: None)
        tested += len(report["hypotheses"])
        if report["verified_bugs"]:
            with_bugs.append((seed, [b["description"] for b in report["verified_bugs"]]))
    limit = 3
    assert binom.sf(limit, seeds, alpha) < 0.05
    assert tested >= seeds * 3  # the sources did propose hypotheses to test
    assert len(with_bugs) <= limit, with_bugs
