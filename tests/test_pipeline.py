"""Stages on plain dict batches, and a small end-to-end audit on a local Ray."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbugs_ray.errors import SpecError
from vbugs_ray.flow import audit, find_slices, generate_rows
from vbugs_ray.grid import build_grid
from vbugs_ray.pipeline import (ClassifyStage, EmbedStage, GenerateStage, ScoreStage, _Execution, ray_stages,
                                scoring_fused)
from vbugs_ray.spec import parse_spec
from vbugs_ray.errors import RunStoreError
from vbugs_ray.store import RunStore, ShardWriter, plan_ranges, rows_table


def _small_spec(spec_dict, budget=480, shard_rows=200, executor="ray"):
    spec_dict["budget"] = budget
    spec_dict["verify"] = False  # verification has its own tests (test_verify.py)
    spec_dict["run"] = {"executor": executor, "shard_rows": shard_rows}
    for role in ("generator", "classifier", "embedder"):
        spec_dict[role]["batch_size"] = 64
    return parse_spec(spec_dict)


def _batch(spec, n=12):
    grid = build_grid(spec).slice(0, n)
    return {name: grid.column(name).to_numpy(zero_copy_only=False) for name in grid.column_names}


@pytest.mark.trains
def test_stages_on_a_plain_batch(spec_dict):
    spec = _small_spec(spec_dict)
    batch = _batch(spec)
    for value in batch.values():  # Ray may hand stages read-only (zero-copy) arrays
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    batch = generated = GenerateStage(spec)(batch)
    assert batch["image"].shape == (12, 64, 64, 3) and batch["image"].dtype == np.uint8
    batch["image"].setflags(write=False)
    batch = EmbedStage(spec)(batch)
    assert batch["embedding"].shape[0] == 12 and batch["valid"].all()
    np.testing.assert_allclose(np.linalg.norm(batch["embedding"], axis=1), 1.0, rtol=1e-4)
    batch = ClassifyStage(spec)(batch)
    assert set(batch["pred"]) <= set(spec.classes)
    assert np.all((batch["p_true"] >= 0) & (batch["p_true"] <= 1))
    np.testing.assert_allclose(batch["loss"], -np.log(np.clip(batch["p_true"], 1e-12, 1)), rtol=1e-5)
    assert all(len(t.split("\t")) == 5 for t in batch["top5"])
    np.testing.assert_array_equal(batch["error"], batch["pred_label"] != batch["label"])
    table = rows_table(batch)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["image_png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert row["top5"][0] == row["pred"] and len(row["embedding"]) == batch["embedding"].shape[1]
    # the fused scoring actor computes the same columns, the classifier in its own batch size
    spec_dict["classifier"]["batch_size"] = 5
    fused = ScoreStage(parse_spec(spec_dict))(generated)
    for name in ("embedding", "pred", "p_true", "error", "top5"):
        np.testing.assert_array_equal(fused[name], batch[name])


def test_embedder_and_classifier_share_an_actor_when_placed_alike(spec_dict):
    spec = _small_spec(spec_dict)
    assert scoring_fused(spec)
    stages = ray_stages(spec)
    assert [s[0] for s in stages] == [GenerateStage, ScoreStage]
    assert stages[1][3] == spec.embedder.num_cpus + spec.classifier.num_cpus  # reserves both roles' CPUs
    spec_dict["embedder"]["num_gpus"] = 0.5  # the embedder on a GPU, the classifier not: two pools
    assert [s[0] for s in ray_stages(parse_spec(spec_dict))] == [GenerateStage, EmbedStage, ClassifyStage]
    spec_dict["classifier"]["num_gpus"] = 0.25
    assert ray_stages(parse_spec(spec_dict))[1][4] == 0.75
    spec_dict["embedder"]["num_gpus"] = spec_dict["classifier"]["num_gpus"] = 1  # 2 GPUs an actor: apart
    assert not scoring_fused(parse_spec(spec_dict))
    spec_dict["embedder"]["num_gpus"] = spec_dict["classifier"]["num_gpus"] = 0
    spec_dict["classifier"]["concurrency"] = 2  # pools of different sizes: apart
    assert not scoring_fused(parse_spec(spec_dict))
    spec_dict["classifier"]["concurrency"] = 1
    spec_dict["run"]["fuse_scoring"] = False
    assert not scoring_fused(parse_spec(spec_dict))


def test_the_driver_publishes_a_whole_shard_no_writer_published(spec_dict, tmp_path, monkeypatch):
    """On a shared file system a writer may not list the others' files: the shard's rows are all
    staged but nobody published it. The execution's end publishes it and reports it once; a
    shard with rows missing is a one-line error."""
    spec = _small_spec(spec_dict, budget=30, shard_rows=10, executor="local")
    rows = pa.table({"row_id": np.arange(100, 130, dtype=np.int64), "x": np.arange(30)})  # ids as in a round
    store = RunStore(tmp_path, planned=plan_ranges(100, 30, 10))
    monkeypatch.setattr(ShardWriter, "publish_if_whole", lambda self, shard: False)
    reported = []
    execution = _Execution(spec, 100, store, [(0, 0, 10), (1, 10, 20), (2, 20, 30)],
                           lambda shard, n: reported.append((shard, n)))
    writer = ShardWriter(**execution.writer)
    writer.write(rows.slice(0, 25))  # shards 0 and 1 whole, shard 2 half
    monkeypatch.undo()
    with pytest.raises(RunStoreError, match=r"shards \[2\] .* incomplete"):
        execution.finish()
    assert reported == [(0, 10), (1, 10)] and store.done_shards() == {0, 1}
    assert pq.read_table(store.shard_dir(1)).column("row_id").to_pylist() == list(range(110, 120))


@pytest.mark.ray
@pytest.mark.trains
def test_end_to_end_on_ray_is_resumable(spec_dict, ray_session, tmp_path):
    spec_dict["classifier"]["num_gpus"] = 0.5  # a GPU stage: its actor pool reserves half a (logical) GPU
    spec = _small_spec(spec_dict)
    run_dir = tmp_path / "run"
    report = audit(spec, run_dir, progress=lambda _: None)

    store = RunStore(run_dir)
    rows = store.read()
    assert rows.num_rows == 480 and store.done_shards() == {0, 1, 2}
    # one streaming execution over the three shards: each stage's one actor loaded its model once
    assert json.loads((run_dir / "loads.json").read_text()) == {"generator": 1, "embedder": 1, "classifier": 1}
    assert not any(run_dir.glob("rows/.staging-*")) and not (run_dir / ".loads").exists()
    assert rows.column("row_id").to_pylist() == list(range(480))
    for column in ("class", "background", "lighting", "colour", "prompt", "seed", "pred", "p_true", "loss",
                   "top5", "error", "embedding", "image_png"):
        assert column in rows.column_names
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk == report
    assert on_disk["n_images"] == 480
    assert on_disk["base_error_rate"] == pytest.approx(np.mean(rows.column("error").to_numpy()))
    for s in on_disk["flagged_slices"]:
        assert {"predicates", "n", "errors", "error_rate", "complement_error_rate", "p_value", "q_value"} <= set(s)
    for s in on_disk["flagged_slices"][: spec.search.top_k]:
        assert 1 <= len(s["caption"]) <= 3  # the retrieval captioner drops phrases below its min_score
    explained = [s["explained_by"] is not None for s in on_disk["flagged_slices"]]
    assert explained == sorted(explained)  # slices that explain themselves come first
    tail = [s["log10_p_value"] for s in on_disk["flagged_slices"] if s["explained_by"] is not None]
    assert tail == sorted(tail)

    # re-run: nothing is regenerated; losing a shard regenerates exactly that shard, identically
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "rows").rglob("*.parquet")}
    generate_rows(spec, run_dir, progress=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "rows").rglob("*.parquet")} == before
    lost = store.shard_dir(1)
    old = pq.read_table(lost).sort_by("row_id")
    shutil.rmtree(lost)
    generate_rows(spec, run_dir, progress=lambda _: None)
    new = pq.read_table(lost).sort_by("row_id")
    assert new.column("row_id").to_pylist() == old.column("row_id").to_pylist()
    assert new.column("image_png").to_pylist() == old.column("image_png").to_pylist()
    assert new.column("pred").to_pylist() == old.column("pred").to_pylist()
    assert store.read().num_rows == 480

    # a different spec may not write into this run dir
    spec_dict["seed"] = 5
    with pytest.raises(RunStoreError, match="different spec"):
        generate_rows(parse_spec(spec_dict), run_dir, progress=lambda _: None)


@pytest.mark.trains
def test_an_interrupt_in_the_middle_of_a_shard_resumes_to_the_same_rows(spec_dict, tmp_path, monkeypatch):
    """Rows are written batch by batch into a shard's staging folder and the shard is published
    when whole: an interrupt after the first batch of shard 1 leaves shard 0 published and shard
    1 staged in part; the re-run discards the partial shard and ends with exactly the rows of an
    uninterrupted run, none missing, none twice."""
    _small_spec(spec_dict, budget=240, shard_rows=120, executor="local")
    spec_dict["classifier"]["batch_size"] = 50
    spec = parse_spec(spec_dict)
    whole = generate_rows(spec, tmp_path / "whole", progress=lambda _: None).read()

    calls = 0
    write = ShardWriter.write

    def interrupted(self, table):
        nonlocal calls
        calls += 1
        if calls == 5:  # shard 0: batches of 50, 50, 20; shard 1: one batch in, then the interrupt
            raise KeyboardInterrupt
        return write(self, table)

    monkeypatch.setattr(ShardWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_rows(spec, tmp_path / "cut", progress=lambda _: None)
    store = RunStore(tmp_path / "cut")
    assert store.done_shards() == {0} and not (tmp_path / "cut" / ".loads").exists()
    assert [p.name for p in store.staging_dir(1).glob("part-*.parquet")] == ["part-000000000120-50.parquet"]
    monkeypatch.setattr(ShardWriter, "write", write)
    messages = []
    resumed = generate_rows(spec, tmp_path / "cut", progress=messages.append).read()
    assert [m.split(" (")[0] for m in messages if "written" in m] == ["shard 2/2 written"]
    assert resumed.column("row_id").to_pylist() == list(range(240))
    assert resumed.equals(whole)


@pytest.mark.trains
def test_local_executor_writes_the_same_rows(spec_dict, tmp_path):
    spec = _small_spec(spec_dict, budget=120, shard_rows=120, executor="local")
    store = generate_rows(spec, tmp_path / "local", progress=lambda _: None)
    rows = store.read()
    assert rows.num_rows == 120
    report = find_slices(tmp_path / "local", progress=lambda _: None)
    assert report["n_images"] == 120


def _vbugs(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.cli
def test_cli_bad_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [circle]\naxes: {lighting: [day]}\nprompt: '{class} {lighting}'\n"
                   "generator: toyworld\nclassifier: resnet9000\nembedder: toyworld_clip\n")
    done = _vbugs("audit", str(bad), "--out", str(tmp_path / "r"))
    assert done.returncode == 2
    assert done.stderr.strip() == ("vbugs: error: spec field 'classifier.backend': unknown backend 'resnet9000'; "
                                   "known: data_cnn, module, timm, torchvision, toyworld_cnn")
    assert not (tmp_path / "r").exists()


@pytest.mark.cli
def test_cli_slices_on_missing_run_is_one_line(tmp_path):
    done = _vbugs("slices", str(tmp_path / "nothing"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a run directory" in done.stderr


def test_placement_autoscaling_pools_and_pinning_reach_ray(spec_dict):
    """Per role: an autoscaling pool (concurrency .. max_concurrency), an accelerator type and
    custom resources, as Ray Data's pool and remote arguments; a fused scoring actor sums them."""
    spec_dict["generator"].update(concurrency=1, max_concurrency=3, num_gpus=0.5, accelerator_type="L4",
                                  resources={"diffusion_node": 0.01})
    for role in ("embedder", "classifier"):
        spec_dict[role].update(resources={"scoring_node": 0.5})
    generate, score = ray_stages(parse_spec(spec_dict))
    assert (generate.actors, generate.max_actors) == (1, 3)
    pool = generate.pool()
    assert (pool.min_size, pool.max_size) == (1, 3)
    assert generate.remote_args() == {"accelerator_type": "L4", "resources": {"diffusion_node": 0.01}}
    assert generate.needs() == {"CPU": 0.25, "GPU": 0.5, "diffusion_node": 0.01, "accelerator_type:L4": 0.001}
    assert score.stage is ScoreStage and score.resources == {"scoring_node": 1.0}  # both roles' share
    assert score.remote_args() == {"resources": {"scoring_node": 1.0}}
    spec_dict["classifier"]["accelerator_type"] = "A100"  # pinned apart: two pools
    assert [s.stage for s in ray_stages(parse_spec(spec_dict))] == [GenerateStage, EmbedStage, ClassifyStage]


@pytest.mark.parametrize("role_options, field", [
    ({"concurrency": 4, "max_concurrency": 2}, "generator.max_concurrency"),
    ({"resources": {"GPU": 1}}, "generator.resources"),
    ({"resources": {"fast": 0}}, "generator.resources.fast"),
    ({"resources": {"fast": "lots"}}, "generator.resources.fast"),
    ({"resources": ["fast"]}, "generator.resources"),
    ({"accelerator_type": ""}, "generator.accelerator_type"),
])
def test_placement_mistakes_name_their_field(spec_dict, role_options, field):
    spec_dict["generator"].update(role_options)
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict)
    assert err.value.field == field, str(err.value)
