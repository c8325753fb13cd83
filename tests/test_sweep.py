"""`vbugs sweep`: the images are drawn, filtered and embedded once; three toy classifiers, each
trained with its own planted bug, score the same images; the comparison shows each model's bug as
specific to it. And the sweep file's mistakes are one line each."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

import vbugs_ray
from vbugs_ray.errors import SpecError
from vbugs_ray.roles import registry
from vbugs_ray.roles.generators.toyworld import ToyWorldGenerator
from vbugs_ray.sweep import parse_sweep, run_sweep

JOBS = Path(__file__).resolve().parent.parent / "jobs"
PLANTED = {"star_at_night": {"class": "star", "lighting": "night"},
           "square_on_grass": {"class": "square"},
           "triangle_on_snow": {"class": "triangle", "background": "snow"}}


class CountingGenerator(ToyWorldGenerator):
    """The toy renderer, counting the images it draws (the local executor runs it in this process)."""

    drawn: list[int] = []

    def generate(self, prompts, seeds):
        CountingGenerator.drawn.append(len(prompts))
        return super().generate(prompts, seeds)


@pytest.fixture
def counting(default_spec_dict):
    saved = {role: dict(names) for role, names in registry._BACKENDS.items()}
    vbugs_ray.register_backend("generator", "counting", CountingGenerator)
    CountingGenerator.drawn = []
    yield
    for role, names in saved.items():
        registry._BACKENDS[role].clear()
        registry._BACKENDS[role].update(names)


def _sweep_file(default_spec_dict, tmp_path: Path) -> Path:
    sweep = yaml.safe_load((JOBS / "sweep_toyworld.yaml").read_text())
    audit = copy.deepcopy(default_spec_dict)
    audit.update(budget=2160, verify=False, captioner=None)
    audit["generator"]["backend"] = "counting"
    audit["run"] = {"executor": "local", "shard_rows": 720}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(audit))
    sweep.update(audit="audit.yaml", output_dir=str(tmp_path / "sweep"))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return tmp_path / "sweep.yaml"


@pytest.mark.trains
def test_a_sweep_generates_once_and_finds_each_models_own_bug(counting, default_spec_dict, tmp_path):
    sweep = parse_sweep(_sweep_file(default_spec_dict, tmp_path))
    assert list(sweep.audits) == list(PLANTED)
    result = run_sweep(sweep, progress=lambda _: None)
    assert sum(CountingGenerator.drawn) == 2160  # every image drawn once, for all three models
    root = tmp_path / "sweep"
    first, *others = PLANTED
    for name in others:
        assert json.loads((root / name / "loads.json").read_text()) == {"generator": 0, "embedder": 0,
                                                                         "classifier": 1}
    columns = ["row_id", "seed", "image_png", "embedding"]
    reference = pads.dataset(str(root / first / "rows"), format="parquet").to_table(columns=columns).sort_by("row_id")
    for name in others:  # the same images and embeddings, scored by another model
        rows = pads.dataset(str(root / name / "rows"), format="parquet").to_table(columns=columns).sort_by("row_id")
        assert rows.equals(reference)

    assert json.loads((root / "comparison.json").read_text()) == result

    # an interrupted sweep resumes: shard 0 of a rescored run whole, the others gone
    for shard in ("shard-00001", "shard-00002"):
        shutil.rmtree(root / "square_on_grass" / "rows" / shard)
    assert run_sweep(sweep, progress=lambda _: None) == result
    assert sum(CountingGenerator.drawn) == 2160  # nothing drawn again
    rows = pads.dataset(str(root / "square_on_grass" / "rows"), format="parquet").to_table(columns=columns)
    assert rows.sort_by("row_id").equals(reference)
    verdicts = {row["slice"]: row for row in result["slices"]}
    for model, predicates in PLANTED.items():
        name = ", ".join(f"{k}={v}" for k, v in predicates.items())
        row = verdicts.get(name)
        assert row is not None, (model, sorted(verdicts))
        assert row["verdict"] == f"specific to {model}", row
        mine = row["models"][model]["error_rate"]
        assert all(mine > 2 * row["models"][m]["error_rate"] for m in PLANTED if m != model), row


def test_a_sweep_files_mistakes_are_one_line(tmp_path, default_spec_dict):
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(default_spec_dict))
    cases = [
        ({"audit": "audit.yaml"}, "classifiers", "is required"),
        ({"audit": "audit.yaml", "classifiers": {"a": {"backend": "toyworld_cnn"}}}, "classifiers", "at least two"),
        ({"audit": "audit.yaml", "classifiers": {"a b": {"backend": "x"}, "c": {"backend": "x"}}}, "classifiers.a b",
         "names a folder"),
        ({"audit": "audit.yaml", "classifiers": {"a": {"backend": "toyworld_cnn", "batch_size": 0},
                                                 "b": {"backend": "toyworld_cnn"}}},
         "classifiers.a.batch_size", ""),
        ({"audit": "missing.yaml", "classifiers": {}}, "<file>", "no spec file"),
        ({"audit": "audit.yaml", "classifiers": {}, "extra": 1}, "extra", "unknown key"),
    ]
    for data, field, words in cases:
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(SpecError) as err:
            parse_sweep(tmp_path / "sweep.yaml")
        assert err.value.field == field and words in str(err.value), (data, str(err.value))


def test_the_shipped_sweeps_parse():
    toy = parse_sweep(JOBS / "sweep_toyworld.yaml")
    assert len(toy.audits) == 3
    timm = parse_sweep(JOBS / "sweep_timm.yaml")
    models = [spec.classifier.options["model"] for spec in timm.audits.values()]
    assert len(set(models)) == 4 and all(len(spec.classifier.options["class_map"]["dog"]) == 118
                                         for spec in timm.audits.values())


@pytest.mark.cli
def test_the_sweep_command_refuses_a_bad_file_in_one_line(tmp_path):
    (tmp_path / "sweep.yaml").write_text("audit: nowhere.yaml\nclassifiers: {}\n")
    done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "sweep", str(tmp_path / "sweep.yaml")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no spec file" in done.stderr


@pytest.mark.ray
@pytest.mark.trains
def test_a_sweep_on_ray_scores_the_stored_images_in_actor_pools(default_spec_dict, ray_session, tmp_path):
    """The Ray path of rescoring: Parquet read, the classifier's actor pool, the writer; the same
    rows as the first run, scored by each model."""
    sweep = yaml.safe_load((JOBS / "sweep_toyworld.yaml").read_text())
    audit = copy.deepcopy(default_spec_dict)
    audit.update(budget=720, verify=False, captioner=None)
    audit["run"] = {"executor": "ray", "shard_rows": 360}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(audit))
    sweep.update(audit="audit.yaml", output_dir=str(tmp_path / "sweep"))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    result = run_sweep(parse_sweep(tmp_path / "sweep.yaml"), progress=lambda _: None)
    root = tmp_path / "sweep"
    first = pads.dataset(str(root / "star_at_night" / "rows"), format="parquet").to_table(
        columns=["row_id", "seed", "embedding", "valid"]).sort_by("row_id")
    for name in ("square_on_grass", "triangle_on_snow"):
        rows = pads.dataset(str(root / name / "rows"), format="parquet").to_table(
            columns=["row_id", "seed", "embedding", "valid", "pred", "top5"]).sort_by("row_id")
        assert rows.select(["row_id", "seed", "embedding", "valid"]).equals(first)
        assert rows.num_rows == 720 and all(rows.column("top5").to_pylist())
        assert json.loads((root / name / "loads.json").read_text())["generator"] == 0
    assert result["classifiers"] == list(PLANTED) and result["slices"]
