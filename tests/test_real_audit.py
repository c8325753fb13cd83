"""A small audit of real backend classes at toy size (tiny diffusers + timm + open_clip + BLIP),
on a local Ray, with the CLIP filter; the transformers captioner; the shipped ImageNet job specs."""

from pathlib import Path

import numpy as np
import pytest

from vbugs_ray.audit import audit, generate_rows
from vbugs_ray.caption import caption_flagged, caption_slices
from vbugs_ray.roles import registry
from vbugs_ray.roles.captioners.transformers import rank_captions
from vbugs_ray.spec import load_spec, parse_spec
from vbugs_ray.store import RunStore

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def test_rank_captions_prefers_words_the_slice_has_and_the_rest_lacks():
    inside = ["a dog in the snow", "a dog in the snow at night", "a dog on grass"]
    outside = ["a dog on grass", "a cat on grass", "a dog in a field"]
    assert rank_captions(inside, outside, top=2) == ["a dog in the snow at night", "a dog in the snow"]
    assert rank_captions([], outside, top=2) == []


def test_transformers_captioner_loads_a_saved_folder(tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    captioner = registry.create("captioner", spec.captioner, spec)
    images = (np.random.default_rng(0).random((3, 64, 64, 3)) * 255).astype(np.uint8)
    captions = captioner.caption_each(images)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)


@pytest.mark.ray
def test_tiny_real_audit_on_ray_writes_a_valid_run_store(tiny_spec_dict, ray_session, tmp_path):
    tiny_spec_dict["run"] = {"executor": "ray", "shard_rows": 16}
    for role in ("generator", "classifier", "embedder"):
        tiny_spec_dict[role]["num_gpus"] = 0.25  # GPU scheduling on a logical GPU; device auto -> CPU here
    tiny_spec_dict["filter"] = {"class_top_k": 1}  # random tiny CLIP: about half the rows fail it
    spec = parse_spec(tiny_spec_dict)
    run_dir = tmp_path / "run"
    report = audit(spec, run_dir, progress=lambda _: None)

    store = RunStore(run_dir)
    assert sorted(store.done_shards()) == [0, 1]
    table = store.read()
    assert table.num_rows == 32 and table.column("row_id").to_pylist() == list(range(32))
    for column in ("image_png", "embedding", "pred_index", "pred_name", "p_true", "loss", "top5", "error",
                   "valid", "filter_reason", "class_similarity", "shift_similarity"):
        assert column in table.column_names, column
    valid = np.asarray(table.column("valid").to_pylist())
    reasons = table.column("filter_reason").to_pylist()
    assert 0 < (~valid).sum() < 32  # the filter marked some rows, not all
    assert all((r == "class_rank") == (not v) for r, v in zip(reasons, valid))
    assert report["filter"] == {"n_generated": 32, "n_invalid": int((~valid).sum()),
                                "invalid_reasons": {"class_rank": int((~valid).sum())}}
    assert report["n_images"] == int(valid.sum())  # statistics count valid rows only

    # re-running a finished audit writes nothing
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "rows").rglob("*.parquet")}
    generate_rows(spec, run_dir, progress=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "rows").rglob("*.parquet")} == before

    # captioning a slice reads its images back from the store and runs the BLIP captioner:
    # in this process, and as a Ray task when the captioner reserves a GPU
    features = ["class", *spec.axis_names]
    flagged = [{"predicates": {"background": "snow"}}]
    caption_slices(flagged, store, spec, features, top_k=1)
    assert flagged[0]["caption"] and all(isinstance(c, str) for c in flagged[0]["caption"])
    tiny_spec_dict["captioner"]["num_gpus"] = 0.5
    on_gpu = parse_spec(tiny_spec_dict)
    remote = [{"predicates": {"background": "snow"}}, {"predicates": {"lighting": "night"}}]
    caption_flagged(remote, store, on_gpu, features, top_k=1)
    assert remote[0]["caption"] == flagged[0]["caption"]  # same sample (seeded), same captioner
    assert "caption" not in remote[1]  # only the top_k


@pytest.mark.parametrize("name", ["imagenet_sdturbo.yaml", "imagenet_sd21_tokens.yaml"])
def test_shipped_imagenet_specs_validate_without_downloading(name):
    spec = load_spec(JOBS / name)
    assert spec.generator.backend == "diffusers" and spec.classifier.backend == "timm"
    assert spec.embedder.backend == "open_clip" and spec.filter is not None


def test_retrieval_captioner_works_with_any_embedder(tiny_spec_dict):
    tiny_spec_dict["captioner"] = {"backend": "retrieval", "options": {"top_phrases": 2}}
    spec = parse_spec(tiny_spec_dict)
    embedder = registry.create("embedder", spec.embedder, spec)
    captioner = registry.create("captioner", spec.captioner, spec, embedder=embedder)
    images = (np.random.default_rng(0).random((8, 64, 64, 3)) * 255).astype(np.uint8)
    emb = embedder.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    caption = captioner.rank(emb[:4], emb[4:])
    assert len(caption) == 2 and set(caption) <= {"cat", "dog", "on grass", "in the snow", "in daylight", "at night"}
