"""`batch_size: auto`: the choice rule, the probe's stopping rules (out of memory, no gain), the
result kept per run dir, and an audit that resolves it on its own."""

import copy
import json

import numpy as np
import pytest
import yaml

from vbugs_ray import batchprobe
from vbugs_ray.errors import SpecError
from vbugs_ray.spec import parse_spec


def test_the_smallest_batch_within_5_percent_of_the_best_is_chosen():
    assert batchprobe.choose([(1, 10.0), (2, 19.0), (4, 30.0), (8, 31.0), (16, 30.5)]) == 4
    assert batchprobe.choose([(1, 10.0), (2, 9.0)]) == 1
    assert batchprobe.choose([(1, 10.0), (2, 20.0), (4, 40.0)]) == 4


def test_auto_is_parsed_for_the_pipeline_roles_only(spec_dict):
    spec_dict["generator"]["batch_size"] = "auto"
    assert parse_spec(spec_dict).generator.batch_size == "auto"
    for bad in ("big", 0, 2.5):
        spec_dict["generator"]["batch_size"] = bad
        with pytest.raises(SpecError) as err:
            parse_spec(spec_dict)
        assert err.value.field == "generator.batch_size"
    spec_dict["generator"]["batch_size"] = 8
    spec_dict["captioner"] = {"backend": "retrieval", "batch_size": "auto"}
    with pytest.raises(SpecError, match="auto is for the generator, embedder and classifier"):
        parse_spec(spec_dict)


class _Timed:
    """A backend whose call costs a fixed overhead plus a per-row time, and which runs out of
    memory above ``memory`` rows (as torch.cuda.OutOfMemoryError reads)."""

    OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})

    def __init__(self, overhead, per_row, memory, clock):
        self.overhead, self.per_row, self.memory, self.clock = overhead, per_row, memory, clock

    def embed_images(self, images):
        if len(images) > self.memory:
            raise self.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.clock[0] += self.overhead + self.per_row * len(images)
        return np.zeros((len(images), 4), np.float32)


def _probe_with(monkeypatch, backend, **kwargs):
    monkeypatch.setattr(batchprobe.registry, "create", lambda *a, **k: backend)
    monkeypatch.setattr(batchprobe.time, "perf_counter", lambda: backend.clock[0])
    monkeypatch.setattr(batchprobe, "_synthetic", lambda role, spec, n: (np.zeros((n, 2, 2, 3), np.uint8),))
    monkeypatch.setattr(batchprobe, "_device_name", lambda: "test device")
    return batchprobe.measure("embedder", None if not kwargs else kwargs.pop("spec"), **kwargs)


def test_the_probe_stops_at_out_of_memory_and_when_doubling_stops_paying(monkeypatch, default_spec):
    clock = [0.0]
    # launch overhead 10 ms, 1 ms a row: the rate grows until the per-row time dominates
    found = _probe_with(monkeypatch, _Timed(0.010, 0.001, 10_000, clock), spec=default_spec)
    sizes = [b for b, _ in found["rates"]]
    assert found["stopped"] == "no gain" and sizes[:4] == [1, 2, 4, 8] and sizes[-1] < 1024
    assert batchprobe.choose([tuple(r) for r in found["rates"]]) in sizes
    clock[0] = 0.0
    found = _probe_with(monkeypatch, _Timed(0.010, 0.0, 16, clock), spec=default_spec)  # all overhead: rate doubles
    assert found["stopped"] == "out of memory" and [b for b, _ in found["rates"]] == [1, 2, 4, 8, 16]
    assert batchprobe.choose([tuple(r) for r in found["rates"]]) == 16


def test_a_failure_other_than_memory_is_not_swallowed(monkeypatch, default_spec):
    class Broken:
        clock = [0.0]

        def embed_images(self, images):
            raise ValueError("a bug in the backend")

    with pytest.raises(ValueError, match="a bug in the backend"):
        _probe_with(monkeypatch, Broken(), spec=default_spec)


def test_the_choice_is_kept_in_the_run_dir_and_measured_once(tmp_path, spec_dict):
    spec_dict["classifier"]["batch_size"] = "auto"
    spec = parse_spec(spec_dict)
    calls, said = [], []

    def probe(role, spec):
        calls.append(role)
        return {"rates": [[1, 10.0], [2, 19.0], [4, 37.0], [8, 38.0]], "stopped": "no gain", "device": "test"}

    resolved = batchprobe.resolve(spec, tmp_path, said.append, probe=probe)
    assert resolved.classifier.batch_size == 4 and resolved.generator.batch_size == spec.generator.batch_size
    assert calls == ["classifier"] and "classifier: batch_size 4 on test" in said[-1]
    kept = json.loads((tmp_path / "batch_sizes.json").read_text())
    assert kept["classifier"]["batch_size"] == 4
    again = batchprobe.resolve(spec, tmp_path, said.append, probe=probe)
    assert again.classifier.batch_size == 4 and calls == ["classifier"]  # read back, not measured
    spec_dict["classifier"]["dtype"] = "bfloat16"  # another measurement's conditions: measured again
    batchprobe.resolve(parse_spec(spec_dict), tmp_path, said.append, probe=probe)
    assert calls == ["classifier", "classifier"]


@pytest.mark.trains
def test_the_toy_generator_is_measured_for_real(default_spec):
    found = batchprobe.measure("generator", default_spec, max_batch=64, budget_s=20)
    sizes = [b for b, _ in found["rates"]]
    assert sizes == [2 ** i for i in range(len(sizes))] and all(r > 0 for _, r in found["rates"])
    assert found["device"].startswith("cpu")


@pytest.mark.cli
@pytest.mark.trains
def test_an_audit_resolves_auto_before_its_rows(default_spec_dict, tmp_path):
    import subprocess
    import sys

    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=48, verify=False)
    spec["run"] = {"executor": "local", "shard_rows": 16}
    spec["search"]["min_support"] = 4
    spec["embedder"]["batch_size"] = "auto"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", str(tmp_path / "spec.yaml"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embedder: batch_size " in done.stderr
    assert json.loads((tmp_path / "run" / "batch_sizes.json").read_text())["embedder"]["batch_size"] >= 1


@pytest.mark.ray
def test_on_ray_the_probe_runs_where_the_roles_actors_would(default_spec, ray_session):
    """A Ray task reserving the role's resources measures it (here a CPU generator)."""
    found = batchprobe._probe_where("generator", default_spec) if default_spec.run.executor == "ray" else None
    assert found is not None and found["rates"][0][0] == 1 and found["device"].startswith("cpu")
