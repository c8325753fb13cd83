"""The Python API: `import vbugs_ray` stays light; audit() takes a path, a mapping or an
AuditSpec and returns a Report; search_table() takes a file, a pyarrow Table or a DataFrame;
register_backend() makes a team's class usable by name, in Ray's actors too."""

import copy
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import vbugs_ray
from vbugs_ray.errors import SpecError, TableError
from vbugs_ray.roles import registry


@pytest.mark.cli
def test_import_loads_nothing_heavy():
    code = ("import sys, vbugs_ray; vbugs_ray.Report; "
            "print(sorted(m for m in ('torch', 'ray', 'pandas', 'scipy', 'pyarrow') if m in sys.modules))")
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


@pytest.fixture
def predictions():
    rng = np.random.default_rng(2)
    n = 20_000
    site, camera = rng.choice(["north", "south", "east"], n), rng.choice(["old", "new"], n)
    wrong = np.where((site == "east") & (camera == "old"), rng.random(n) < 0.35, rng.random(n) < 0.05)
    return pd.DataFrame({"site": site, "camera": camera, "wrong": wrong})


def test_search_table_on_a_dataframe_a_file_and_a_path(predictions, tmp_path):
    report = vbugs_ray.search_table(predictions, error="wrong", max_order=2)
    assert report.flagged_slices[0]["predicates"] == {"site": "east", "camera": "old"}
    frame = report.to_pandas()
    assert frame.loc[0, "slice"] == "site=east, camera=old" and len(frame) == len(report.flagged_slices)
    assert "flagged slices" in repr(report) and "site=east" in str(report)
    path = tmp_path / "p.parquet"
    predictions.to_parquet(path)
    out = tmp_path / "slices.json"
    again = vbugs_ray.search_table(path, error="wrong", max_order=2, out=out)
    assert again.flagged_slices == report.flagged_slices
    assert json.loads(out.read_text())["flagged_slices"] == report.flagged_slices
    with pytest.raises(TableError, match="--error-col 'nope' is not a column"):
        vbugs_ray.search_table(predictions, error="nope")
    with pytest.raises(SpecError, match="search.max_order"):
        vbugs_ray.search_table(predictions, error="wrong", max_order=9)


class LocalClass:  # importable: tests/ is on sys.path as rootdir-relative module test_api
    pass


def test_register_backend_checks_what_it_is_given(restore_registry):
    def make():
        class Inner:
            pass
        return Inner

    with pytest.raises(SpecError, match="unknown role 'painter'"):
        vbugs_ray.register_backend("painter", "mine", LocalClass)
    with pytest.raises(SpecError, match="must be defined at the top of an importable module"):
        vbugs_ray.register_backend("classifier", "mine", make())
    with pytest.raises(SpecError, match="expected a class or 'module:Class'"):
        vbugs_ray.register_backend("classifier", "mine", "no colon")
    assert registry.added() == {}
    vbugs_ray.register_backend("classifier", "mine", "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier")
    assert registry.added() == {"classifier": {"mine": "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier"}}


def _small(spec_dict, executor):
    spec = copy.deepcopy(spec_dict)
    spec.update(budget=96, verify=False)
    spec["run"] = {"executor": executor, "shard_rows": 48}
    spec["search"]["min_support"] = 4
    spec["classifier"]["backend"] = "mine"
    return spec


@pytest.mark.trains
def test_audit_takes_a_mapping_and_a_registered_backend(restore_registry, default_spec_dict, tmp_path):
    vbugs_ray.register_backend("classifier", "mine", "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier")
    report = vbugs_ray.audit(_small(default_spec_dict, "local"), out=tmp_path / "run")
    assert report.path == tmp_path / "run" / "report.json" and report.path.exists()
    assert report.html_path == tmp_path / "run" / "report.html"
    assert report.data["n_images"] == 96 and isinstance(report.to_pandas(), pd.DataFrame)
    assert json.loads(report.path.read_text())["flagged_slices"] == report.flagged_slices


@pytest.mark.ray
@pytest.mark.trains
def test_a_registered_backend_reaches_rays_actors(restore_registry, default_spec_dict, tmp_path, ray_session):
    """The session's Ray workers started before the registration: the name travels with the stages."""
    vbugs_ray.register_backend("classifier", "mine", "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier")
    report = vbugs_ray.audit(_small(default_spec_dict, "ray"), out=tmp_path / "run")
    assert report.data["n_images"] == 96
