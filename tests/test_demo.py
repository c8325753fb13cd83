"""What a user runs: the embedded demo finds its planted bugs, and a finished run's statistics
re-run without its models."""

import json
import shutil
import subprocess
import sys

import pytest

from vbugs_ray.audit import audit
from vbugs_ray.spec import parse_spec


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


@pytest.mark.cli
@pytest.mark.trains
def test_demo_spec_ranks_its_planted_bugs_first_and_second(tmp_path):
    """jobs/toyworld.yaml plants two bugs (no stars at night in training; squares nearly always on
    grass): the audit of its 7,200 images lists exactly those two first. (The local executor: the
    same stages as `make demo` without Ray's start-up.)"""
    done = _vbugs("audit", "--executor", "local", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    top = [s["predicates"] for s in report["flagged_slices"][:2]]
    assert sorted(top, key=len, reverse=True) == [{"class": "star", "lighting": "night"}, {"class": "square"}]
    for s in report["flagged_slices"][:2]:
        assert s["explained_by"] is None and s["q_value"] < 1e-10
    assert "class=star, lighting=night" in done.stdout


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

