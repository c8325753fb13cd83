"""A batch that raises, or a classifier that returns NaN, costs its bad rows, not the run: the rows
are kept, marked invalid with the reason, left out of the statistics and counted in the report;
past run.max_failed_share the run stops with one line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.dataset as pads
import pytest

import vbugs_ray
from vbugs_ray.errors import RunStoreError, SpecError
from vbugs_ray.failures import FailureBudget, guarded
from vbugs_ray.flow import audit
from vbugs_ray.roles import registry
from vbugs_ray.roles.classifiers.toyworld_cnn import ToyWorldClassifier
from vbugs_ray.roles.generators.toyworld import ToyWorldGenerator
from vbugs_ray.spec import parse_spec


def test_guarded_isolates_the_rows_that_fail_alone():
    calls = []

    def fn(rows):
        calls.append(len(rows))
        if {3, 11} & set(rows.tolist()):
            raise ValueError(f"bad input among {len(rows)}")
        return rows * 10

    out, failed = guarded(fn, 16, "generator")
    assert sorted(failed) == [3, 11] and failed[3] == "generator: ValueError: bad input among 1"
    assert out.tolist() == [0 if i in (3, 11) else i * 10 for i in range(16)]
    assert len(calls) <= 1 + 2 * 2 * 4  # two bad rows: at most two bisection paths of depth log2(16)
    out, failed = guarded(lambda rows: 1 / 0, 4, "embedder")
    assert out is None and len(failed) == 4 and failed[0].startswith("embedder: ZeroDivisionError")
    out, failed = guarded(lambda rows: np.zeros(len(rows) + 1), 3, "classifier")  # a wrong number of outputs
    assert out is None and failed[0] == "classifier: ValueError: returned 2 outputs for 1 inputs"


def test_a_batch_where_every_row_fails_stops_splitting_early():
    """A broken setup (every call raises) costs a few calls, not one per row."""
    calls = []

    def broken(rows):
        calls.append(len(rows))
        raise RuntimeError("CUDA error: no kernel image")

    out, failed = guarded(broken, 4096, "classifier")
    assert out is None and sorted(failed) == list(range(4096))
    assert len(calls) < 40, len(calls)
    assert failed[4095].startswith("classifier: RuntimeError: CUDA error") and "not tried alone" in failed[4095]


def test_an_axis_may_not_be_named_after_a_stored_column(default_spec_dict):
    spec = copy.deepcopy(default_spec_dict)
    spec["axes"]["failed"] = ["yes", "no"]
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert err.value.field == "axes.failed" and "reserved" in str(err.value)


def test_the_failure_budget_stops_past_its_share():
    budget = FailureBudget(0.1, 100)
    budget.add(10, "generator: ValueError: x")  # exactly the share: still going
    with pytest.raises(RunStoreError) as err:
        budget.add(1, "")
    assert "11 rows failed, more than run.max_failed_share (0.1) of the 100" in str(err.value)
    assert "e.g. generator: ValueError: x" in str(err.value)


class PurpleBreaksGenerator(ToyWorldGenerator):
    """Raises on any batch holding a purple prompt (as a corrupt input would)."""

    def generate(self, prompts, seeds):
        if any("purple" in p for p in prompts):
            raise ValueError("cannot draw purple")
        return super().generate(prompts, seeds)


class NaNOnDarkImagesClassifier(ToyWorldClassifier):
    """Returns NaN probabilities for the darkest images (a numerical blow-up on some inputs)."""

    def predict_proba(self, images):
        probs = np.array(super().predict_proba(images), np.float64)
        probs[np.asarray(images).reshape(len(images), -1).mean(axis=1) < 40] = np.nan
        return probs


@pytest.fixture
def flaky(default_spec_dict):
    saved = {role: dict(names) for role, names in registry._BACKENDS.items()}
    vbugs_ray.register_backend("generator", "purple_breaks", PurpleBreaksGenerator)
    vbugs_ray.register_backend("classifier", "nan_on_dark", NaNOnDarkImagesClassifier)
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=720, verify=False, captioner=None)
    spec["generator"]["backend"] = "purple_breaks"
    spec["classifier"]["backend"] = "nan_on_dark"
    spec["run"] = {"executor": "local", "shard_rows": 240, "max_failed_share": 0.5}
    yield spec
    for role, names in saved.items():
        registry._BACKENDS[role].clear()
        registry._BACKENDS[role].update(names)


@pytest.mark.trains
def test_failed_rows_are_marked_kept_and_counted(flaky, tmp_path):
    report = audit(parse_spec(flaky), tmp_path / "run", progress=lambda _: None)
    files = sorted(str(p) for p in (tmp_path / "run" / "rows").glob("shard-*/*.parquet"))
    rows = pads.dataset(files, format="parquet").to_table(
        columns=["row_id", "colour", "valid", "filter_reason", "failed", "error", "pred"]).to_pydict()
    assert rows["row_id"] == sorted(rows["row_id"]) and len(rows["row_id"]) == 720  # every row kept
    purple = [i for i, c in enumerate(rows["colour"]) if c == "purple"]
    assert len(purple) == 120
    for i in purple:
        assert rows["failed"][i] == "generator: ValueError: cannot draw purple"
        assert not rows["valid"][i] and rows["filter_reason"][i] == "failed" and not rows["error"][i]
    nan_rows = [i for i, r in enumerate(rows["failed"]) if r.startswith("classifier:")]
    assert nan_rows and all(rows["failed"][i] == "classifier: non-finite output (NaN or inf probabilities)"
                            for i in nan_rows)
    assert all(not rows["valid"][i] and rows["pred"][i] == "" for i in nan_rows)
    good = [i for i, r in enumerate(rows["failed"]) if not r]
    assert all(rows["valid"][i] for i in good)
    failed = len(purple) + len(nan_rows)
    assert report["filter"] == {"n_generated": 720, "n_invalid": failed, "invalid_reasons": {"failed": failed}}
    assert report["n_images"] == 720 - failed  # the statistics count valid rows only
    assert json.loads((tmp_path / "run" / "report.json").read_text())["filter"]["n_invalid"] == failed


@pytest.mark.trains
def test_past_the_budget_the_run_stops_in_one_line(flaky, tmp_path):
    flaky["run"]["max_failed_share"] = 0.01
    with pytest.raises(RunStoreError) as err:
        audit(parse_spec(flaky), tmp_path / "run", progress=lambda _: None)
    message = str(err.value)
    assert "more than run.max_failed_share (0.01)" in message and "\n" not in message
    assert "fix the cause and re-run to resume" in message
