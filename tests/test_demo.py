"""What a user runs: the embedded demo finds its planted bugs, and a finished run's statistics
re-run without its models."""

import json
import shutil
import subprocess
import sys

import pytest

from vbugs_ray.flow import audit
from vbugs_ray.spec import parse_spec


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


@pytest.mark.cli
@pytest.mark.trains
def test_demo_spec_verifies_its_planted_bugs_first_and_second(demo_run):
    """jobs/toyworld.yaml plants two bugs (no stars at night in training; squares nearly always on
    grass): the slice search lists exactly those two first, and the verified bugs, tested on fresh
    images, are those two, first and second, each named once: round 1 verifies several square
    descriptions (at night, small, on brick), each failing everywhere but on grass, and round 2
    verifies their complement, "square, not grass", which names the one bug). Then `vbugs
    diagnose` scores phrases, and `vbugs verify` on the finished run generates nothing new. (The local executor: the same stages as `make demo` without Ray's
    start-up.)"""
    run_dir, done = demo_run
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    top = [s["predicates"] for s in report["flagged_slices"][:2]]
    assert sorted(top, key=len, reverse=True) == [{"class": "star", "lighting": "night"}, {"class": "square"}]
    for s in report["flagged_slices"][:2]:
        assert s["explained_by"] is None and s["q_value"] < 1e-10
    assert "class=star, lighting=night" in done.stdout

    bugs = report["verified_bugs"]
    first, second = sorted(bugs[:2], key=lambda b: b["class"])
    # the spurious cue, named once: squares fail off grass, against fresh squares on grass
    assert first["description"] == "square, not grass", [b["description"] for b in bugs]
    assert first["base_error_rate"] < 0.05 and "complement" in first["sources"]
    assert {"square, at night", "square, small"} <= {e["description"] for e in first["evidence"]}
    assert second["class"] == "star" and "at night" in second["description"]
    assert [b["class"] for b in bugs].count("square") == 1, [b["description"] for b in bugs]
    assert not [b for b in bugs[2:] if b["class"] == "star" and "at night" in b["description"]], \
        [b["description"] for b in bugs]
    complement = next(h for h in report["hypotheses"] if h["key"] == first["hypothesis"])
    assert complement["excluded"] == {"background": "grass"} and complement["round"] == 2
    for bug in bugs[:2]:
        assert bug["q_value"] < 1e-6 and bug["ci_low"] > bug["base_error_rate"] + 0.2
        assert bug["n"] >= 150 and len(bug["row_ids"]) == bug["n"]
    tested = {h["key"]: h for h in report["hypotheses"]}
    assert {h["verdict"] for h in tested.values()} == {"verified", "rejected"}
    assert {s for b in bugs[:2] for s in b["sources"]} >= {"slice", "cluster", "diagnosis"}
    assert report["discovery"]["diagnosis"]["spearman"] > 0.3
    assert "verified bugs from" in done.stdout

    # counterfactual pairs: the same failing images, the bug's value changed, everything else kept
    flips = {c["change"]: c for c in second["counterfactuals"]}
    assert set(flips) >= {"lighting: night -> day", "lighting: night -> dusk", "lighting: night -> fog"}
    assert flips["lighting: night -> day"]["n"] >= 10
    assert flips["lighting: night -> day"]["fixed"] >= 0.7 * flips["lighting: night -> day"]["n"], flips
    on_grass = {c["change"]: c for c in first["counterfactuals"]}["background: not grass -> grass"]
    assert on_grass["n"] >= 10 and on_grass["fixed"] >= 0.7 * on_grass["n"], first["counterfactuals"]
    import pyarrow.dataset as pads

    folder = run_dir / "verify" / report["verification"]["folder"].rsplit("/", 1)[1]
    made = {r["row_id"]: r for r in pads.dataset(str(folder / "counterfactual" / "rows")).to_table(
        columns=["row_id", "seed", "lighting", "background", "colour", "pair_of", "change"]).to_pylist()}
    shown = {r["row_id"]: r for r in pads.dataset([str(p) for p in folder.glob("round-*/rows/shard-*/*.parquet")]).to_table(
        columns=["row_id", "seed", "lighting", "background", "colour", "error"]).to_pylist()}
    for failing, changed in flips["lighting: night -> day"]["pairs"]:
        a, b = shown[failing], made[changed]
        assert a["error"] and b["pair_of"] == failing and a["seed"] == b["seed"]
        assert (a["lighting"], b["lighting"]) == ("night", "day") and (a["background"], a["colour"]) == \
            (b["background"], b["colour"])
    assert "same image, changed: " in done.stdout and "the same images, changed" in (run_dir / "report.html").read_text()

    diagnose = _vbugs("diagnose", str(run_dir), "a star at night", "a star in daylight")
    assert diagnose.returncode == 0, diagnose.stderr[-2000:]
    night, day = json.loads(diagnose.stdout)["phrases"]
    assert night["predicted_loss"] > day["predicted_loss"] + 2 * max(night["spread"], day["spread"])

    again = _vbugs("verify", str(run_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "written" not in again.stderr  # every round's shards were already there
    assert json.loads((run_dir / "report.json").read_text())["verified_bugs"] == bugs


@pytest.mark.cli
def test_slices_rerun_needs_no_models(tiny_models, tiny_spec_dict, tmp_path):
    """`vbugs slices RUN_DIR` re-runs the statistics from the run store alone: the spec's model
    folders may be gone."""
    models = tmp_path / "models"
    for role, key in (("generator", "sd"), ("captioner", "blip")):
        copy = shutil.copytree(tiny_models[key], models / key)
        tiny_spec_dict[role]["options"]["model"] = str(copy)
    run_dir = tmp_path / "run"
    audit(parse_spec(tiny_spec_dict), run_dir, progress=lambda _: None)
    first = json.loads((run_dir / "report.json").read_text())
    shutil.rmtree(models)

    done = _vbugs("slices", str(run_dir), "--alpha", "0.5", "--min-support", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["search"]["alpha"] == 0.5 and report["n_images"] == first["n_images"] == 32
    assert all("caption" not in s for s in report["flagged_slices"])  # statistics only

