"""A small audit of real backend classes at toy size (tiny diffusers + timm + open_clip + BLIP),
on a local Ray, with the CLIP filter; the transformers captioner; the shipped ImageNet job specs."""

import io
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from vbugs_ray.flow import audit, generate_rows
from vbugs_ray.caption import caption_slices
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


@pytest.fixture(scope="module")
def seeing_blip(tmp_path_factory) -> str:
    """A saved tiny BLIP whose captions depend on the image. ``tiny.tiny_blip`` draws its vision
    tower at BlipVisionConfig's default initializer_range (1e-10) and its decoder's cross-attention
    at 0.02, so it gives every image the same caption, and no check could tell which images were
    captioned. Here the vision tower and the cross-attention are re-drawn (seeded) at unit-ish scale."""
    import torch

    from vbugs_ray.tiny import tiny_blip

    model, processor = tiny_blip(0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.vision_model.named_parameters():
            if param.dim() > 1 or name.endswith("embedding"):
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)
        for name, param in model.text_decoder.named_parameters():
            if "crossattention" in name and param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=g))
    folder = tmp_path_factory.mktemp("seeing-blip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _reference_captions(folder: str, images: np.ndarray, max_new_tokens: int, num_beams: int) -> list[str]:
    """Captions of ``images`` straight from transformers: the saved processor and model, greedy or
    beam generation with the given settings, special tokens dropped, whitespace stripped."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    with torch.inference_mode():
        ids = model.generate(**processor(images=list(images), return_tensors="pt"),
                             max_new_tokens=max_new_tokens, num_beams=num_beams)
    return [c.strip() for c in processor.batch_decode(ids, skip_special_tokens=True)]


def test_transformers_captioner_loads_a_saved_folder(tiny_spec_dict, tiny_models, seeing_blip):
    """The backend captions what transformers itself produces from the saved folder, image by
    image and in order, with the spec's generation settings (max_new_tokens 6, num_beams 1); with
    the conftest's folder (every image captioned alike) and with one that tells images apart."""
    options = tiny_spec_dict["captioner"]["options"]
    rng = np.random.default_rng(0)
    images = (rng.random((4, 64, 64, 3)) * 255).astype(np.uint8)
    images[0] = 0  # a black and a white image: captions the seeing model tells apart from noise
    images[1] = 255
    for folder in (tiny_models["blip"], seeing_blip):
        options["model"] = folder
        spec = parse_spec(tiny_spec_dict)
        captioner = registry.create("captioner", spec.captioner, spec)
        captions = captioner.caption_each(images)
        reference = _reference_captions(folder, images, options["max_new_tokens"], options["num_beams"])
        assert captions == reference, folder
        assert all(isinstance(c, str) for c in captions)
        assert all(len(c.split()) <= options["max_new_tokens"] for c in captions)  # one word per token here
    assert len(set(captions)) >= 3, captions  # the seeing model's captions depend on the image (so on order)


@pytest.mark.ray
def test_tiny_real_audit_on_ray_writes_a_valid_run_store(tiny_spec_dict, ray_session, tmp_path, seeing_blip):
    tiny_spec_dict["run"] = {"executor": "ray", "shard_rows": 16}
    for role in ("generator", "classifier", "embedder"):
        tiny_spec_dict[role]["num_gpus"] = 0.25  # GPU scheduling on a logical GPU; device auto -> CPU here
    tiny_spec_dict["filter"] = {"class_top_k": 1}  # random tiny CLIP: about half the rows fail it
    tiny_spec_dict["captioner"]["options"]["model"] = seeing_blip  # captions that tell images apart
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
    # in this process with the local executor, and as a Ray Data actor pool with the Ray executor
    features = ["class", *spec.axis_names]
    flagged = [{"predicates": {"background": "snow"}}]
    in_process = parse_spec({**tiny_spec_dict, "run": {"executor": "local", "shard_rows": 16}})
    caption_slices(flagged, store, in_process, features, top_k=1)
    caption = flagged[0]["caption"]
    assert caption and all(isinstance(c, str) and c for c in caption)
    assert len(caption) <= tiny_spec_dict["captioner"]["options"].get("top_phrases", 3)
    # the caption describes the slice's own rows: the documented sample (valid rows only; up to
    # images_per_slice of the slice, failing rows first, then as many of the rest of the run, drawn
    # with numpy's generator seeded by the spec seed), captioned by the same captioner, ranked
    rows = store.read(columns=["row_id", "error", "valid", "background", "image_png"])
    rows = rows.filter(pc.fill_null(rows.column("valid"), False))
    row_ids = np.asarray(rows.column("row_id").to_pylist())
    errors = np.asarray(rows.column("error").to_pylist(), bool)
    in_slice = np.asarray(rows.column("background").to_pylist()) == "snow"
    pngs = rows.column("image_png").to_pylist()
    k = tiny_spec_dict["captioner"]["options"]["images_per_slice"]
    rng = np.random.default_rng(spec.seed)
    members = np.nonzero(in_slice)[0]
    failing = rng.permutation(members[errors[members]])[:k]
    inside = np.concatenate([failing, rng.permutation(members[~errors[members]])[: k - len(failing)]])
    outside = rng.permutation(np.nonzero(~in_slice)[0])[:k]
    captioner = registry.create("captioner", spec.captioner, spec)

    def captions_of(positions) -> list[str]:
        images = np.stack([np.asarray(Image.open(io.BytesIO(pngs[i])).convert("RGB")) for i in positions])
        return captioner.caption_each(images)

    inside_captions, outside_captions = captions_of(inside), captions_of(outside)
    assert set(caption) <= set(inside_captions), (caption, inside_captions)
    assert set(inside_captions) != set(outside_captions)  # the check above can tell the samples apart
    assert caption == rank_captions(inside_captions, outside_captions, captioner.top)
    # and whatever the sample, every phrase is a caption of some valid row of the slice
    assert set(caption) <= set(captions_of(members)), (caption, row_ids[members])
    tiny_spec_dict["captioner"].update(num_gpus=0.25, concurrency=2)  # two actors on the logical GPU
    on_gpu = parse_spec(tiny_spec_dict)
    remote = [{"predicates": {"background": "snow"}}, {"predicates": {"lighting": "night"}},
              {"predicates": {"class": "cat"}}]
    local = [dict(item) for item in remote]
    caption_slices(remote, store, on_gpu, features, top_k=2)
    caption_slices(local, store, in_process, features, top_k=2)
    assert remote[0]["caption"] == flagged[0]["caption"]  # same sample (seeded), same captioner
    assert remote[1]["caption"] == local[1]["caption"]  # the second actor's set, in order
    assert "caption" not in remote[2]  # only the top_k


@pytest.mark.parametrize("name", ["imagenet_sdturbo.yaml", "imagenet_sd21_tokens.yaml"])
def test_shipped_imagenet_specs_validate_without_downloading(name):
    spec = load_spec(JOBS / name)
    assert spec.generator.backend == "diffusers" and spec.classifier.backend == "timm"
    assert spec.embedder.backend == "open_clip" and spec.filter is not None


def test_shipped_imagenette_job_maps_each_folder_to_its_imagenet_class():
    """The class-only folder job: a dataset without metadata (axes: auto), each WordNet folder
    mapped to its ImageNet output by name (tench is output 0, parachute 701), the phrase words
    given for discovery and retrieval. Checked without the folder or any download."""
    from vbugs_ray.roles.classifiers._torch_image import class_map_for

    spec = load_spec(JOBS / "imagenette.yaml")
    assert spec.generator.backend == "dataset" and spec.axes_auto and spec.embedder.backend == "open_clip"
    options = registry.options_of("classifier", spec.classifier)
    class_map = class_map_for(spec, options.labels, options.class_map, 1000)
    probs = np.eye(1000)[[0, 217, 482, 491, 497, 566, 569, 571, 574, 701]]
    assert (class_map.p_true(probs, np.arange(10)) == 1).all()  # each folder's images, its own output
    assert len(spec.verify.vocabulary) >= 20


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
