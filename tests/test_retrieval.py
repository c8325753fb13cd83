"""Free phrases tested on a dataset's held-out images by retrieval (verify.retrieval), and the
class-only audit of a folder without metadata that needs it.

The images are toy-world renders (their truth is known: each one's lighting), the embedder the
toy CLIP, which knows the toy world's words. ``ToyFolder`` is the ``dataset`` generator reading a
folder of such renders; it only says so, so that the toy CLIP and the toy CNN accept it.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vbugs_ray.roles.generators.dataset import DatasetGenerator
from vbugs_ray.store import RunStore
from vbugs_ray.toyworld import renderer
from vbugs_ray.verify.hypotheses import Hypothesis
from vbugs_ray.verify.retrieval import POOL, SHARE, Pool, nearest, pool_of, text_direction
from vbugs_ray.verify.verdicts import fisher_greater

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
PHRASES = ["at night", "in daylight", "at dusk", "in fog", "grass", "snow", "sand", "water", "brick",
           "small", "large", "red", "blue", "yellow"]


class ToyFolder(DatasetGenerator):
    """``dataset`` over a folder of toy-world renders (what the toy models were trained on)."""

    draws_toy_world = True


def _render(n: int, seed: int, fixed: dict | None = None) -> tuple[np.ndarray, list[dict]]:
    props = renderer.sample_properties(n, np.random.default_rng(seed), fixed)
    return renderer.render(props, list(range(seed * 10_000, seed * 10_000 + n)), 64), props


def _class_only_spec(default_spec_dict) -> dict:
    return {**default_spec_dict, "axes": {}, "prompt": "a {class}", "budget": None, "images_per_cell": 1}


@pytest.fixture(scope="module")
def toy_clip(default_spec):
    from vbugs_ray.roles import registry

    registry.prepare("embedder", default_spec.embedder, default_spec, progress=lambda _: None)
    return registry.create("embedder", default_spec.embedder, default_spec)


@pytest.fixture(scope="module")
def star_pool(toy_clip):
    """400 held-out-like stars, lighting at random, embedded by the toy CLIP."""
    images, props = _render(400, seed=3, fixed={"class": ["star"]})
    emb = np.asarray(toy_clip.embed_images(images), np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = Pool(np.asarray([f"star/{i}.png" for i in range(400)], dtype=object), np.arange(400),
                np.full(400, POOL + pool_of(Hypothesis("star", ())).key, dtype=object), {}, emb)
    return pool, np.asarray([p["lighting"] for p in props])


@pytest.mark.trains
def test_a_phrase_arm_is_the_quarter_of_the_pool_the_embedder_places_nearest_it(star_pool, toy_clip,
                                                                                default_spec_dict):
    """Power: the arm for "star, at night" is mostly night images, and a classifier failing at
    night (and rarely elsewhere) is found: one-sided Fisher against a random draw of the class."""
    from vbugs_ray.spec import parse_spec

    spec = parse_spec(_class_only_spec(default_spec_dict))
    pool, lighting = star_pool
    h = Hypothesis("star", (), ("at night",))
    arm = nearest(pool, h, text_direction(spec, toy_clip, h), n=150)
    chosen = np.asarray([int(s.split("/")[1].split(".")[0]) for s in arm["source"]])
    assert len(chosen) == math.ceil(SHARE * 400) == 100 and len(set(chosen)) == 100
    assert arm["seed"] == chosen.tolist()  # each row keeps the seed it was embedded under
    night = lighting == "night"
    assert night[chosen].mean() >= 0.8, f"{night[chosen].mean():.2f} of the arm at night (pool {night.mean():.2f})"
    rng = np.random.default_rng(0)
    fails = np.where(night, rng.random(400) < 0.7, rng.random(400) < 0.1)
    base = rng.permutation(400)[:150]
    p = fisher_greater(int(fails[chosen].sum()), len(chosen), int(fails[base].sum()), len(base))
    assert p < 1e-6
    # an arm with axis values draws from its own pool only (here: none), and its ranking is
    # within cells of the open axes: a cue the embedder sees in a known axis is not the phrase's
    assert nearest(pool, Hypothesis("star", (("site", "b"),), ("at night",)), text_direction(spec, toy_clip, h),
                   n=150)["source"] == []
    by_lighting = Pool(pool.source, pool.seed, pool.pools, {"lighting": lighting.astype(object)}, pool.embeddings)
    within = nearest(by_lighting, h, text_direction(spec, toy_clip, h), n=400)
    shares = {v: np.mean(np.asarray(within["lighting"]) == v) for v in ("night", "day", "dusk", "fog")}
    assert all(abs(shares[v] - (lighting == v).mean()) < 0.05 for v in shares), shares


@pytest.mark.trains
def test_phrase_arms_are_calibrated_when_failures_do_not_depend_on_the_image(star_pool, toy_clip,
                                                                           default_spec_dict):
    """Null: failures independent of the image (each star fails with probability 0.2). Over 14
    phrases x 30 draws of the failures, the one-sided Fisher test of the phrase's arm against a
    random draw of the class rejects at 0.05 no more often than 5% (+ 3 standard errors): the
    selection reads embeddings only, so the test keeps its level."""
    from vbugs_ray.spec import parse_spec

    spec = parse_spec(_class_only_spec(default_spec_dict))
    pool, _ = star_pool
    arms = []
    for phrase in PHRASES:
        h = Hypothesis("star", (), (phrase,))
        arm = nearest(pool, h, text_direction(spec, toy_clip, h), n=150)
        arms.append(np.asarray([int(s.split("/")[1].split(".")[0]) for s in arm["source"]]))
    rng = np.random.default_rng(11)
    p_values = []
    for _ in range(30):
        fails = rng.random(400) < 0.2
        for chosen in arms:
            base = rng.permutation(400)[:150]
            p_values.append(fisher_greater(int(fails[chosen].sum()), len(chosen), int(fails[base].sum()), len(base)))
    rate = float(np.mean(np.asarray(p_values) <= 0.05))
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(p_values)), rate


def _folder(root, per_class: int) -> None:
    """Toy-world renders in one sub-folder per class, no metadata (lighting and the rest unknown)."""
    for i, name in enumerate(CLASSES):
        images, _ = _render(per_class, seed=20 + i, fixed={"class": [name]})
        (root / name).mkdir(parents=True)
        for j, image in enumerate(images):
            Image.fromarray(image).save(root / name / f"{j:04d}.png")


@pytest.mark.trains
def test_a_folder_without_metadata_is_audited_and_its_phrase_bug_verified_on_held_out_images(
        tmp_path, default_spec_dict, restore_registry):
    """The toy CNN fails on stars at night (a planted bug); the folder says nothing of the
    lighting. The audit is class-only, discovery describes the stars' failures with the
    vocabulary, and "star, at night" is verified on held-out stars the embedder finds, none of
    them an audited image; the pool and the arms are one round's held-out rows."""
    from vbugs_ray import api
    from vbugs_ray.roles import registry

    registry.register("generator", "toy_folder", ToyFolder)
    folder = tmp_path / "images"
    _folder(folder, 300)
    spec = {**{k: v for k, v in default_spec_dict.items() if k not in ("budget", "sampling", "prompt")},
            "name": "toy-folder", "axes": "auto",
            "generator": {"backend": "toy_folder", "options": {
                "source": {"format": "image_folder", "path": str(folder), "size": 64}, "held_out": 0.3}},
            "verify": {"images_per_hypothesis": 100, "replicate": False, "rounds": 2, "vocabulary": PHRASES},
            "run": {"executor": "local", "shard_rows": 512}, "output_dir": str(tmp_path / "run")}
    report = api.audit(spec, progress=lambda _: None)
    data = report.data
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["spec"]["axes"] == {}
    assert data["n_images"] == 6 * 210 and data["read_from_dataset"]
    stars = [b for b in data["verified_bugs"] if b["class"] == "star" and "at night" in b["description"]]
    assert stars, [b["description"] for b in data["verified_bugs"]]
    bug = stars[0]
    assert bug["error_rate"] > 2 * bug["base_error_rate"] and bug["q_value"] <= 0.025
    (key,) = [p for p in (tmp_path / "run" / "verify").iterdir() if p.is_dir()]
    audited = set(RunStore(tmp_path / "run").read(columns=["source"]).column("source").to_pylist())
    for round_dir in sorted(key.glob("round-*")):
        rows = pq.read_table(round_dir / "plan.parquet")
        tested = set(rows.column("source").to_pylist())
        assert not tested & audited  # held-out images only
        pool_path = round_dir / "pool" / "plan.parquet"
        if not pool_path.exists():
            continue
        pool = pq.read_table(pool_path)
        assert not set(pool.column("source").to_pylist()) & audited
        assert min(rows.column("row_id").to_pylist()) > max(pool.column("row_id").to_pylist())
        phrases = {Hypothesis.from_state(h).key for h in json.loads((round_dir / "plan.json").read_text())["tests"]
                   if h["phrases"]}
        assert phrases
        for name in phrases:
            arm = rows.filter(pc.equal(rows.column("hypothesis"), name))
            keys = arm.column("source").to_pylist()
            assert len(set(keys)) == len(keys) and set(keys) <= set(pool.column("source").to_pylist())

    # interrupted after round 1's pool was embedded, before its own plan was written: the re-run
    # plans the same rows (same pool, same arms, same seeds) and reaches the same verdicts
    plans = {d.name: pq.read_table(d / "plan.parquet") for d in sorted(key.glob("round-*"))}
    for name in ("plan.json", "plan.parquet"):
        (key / "round-1" / name).unlink()
    for path in [key / "round-1" / "rows", *[d for d in key.glob("round-*") if d.name != "round-1"]]:
        shutil.rmtree(path)
    again = api.audit(spec, progress=lambda _: None)
    assert {d.name: pq.read_table(d / "plan.parquet") for d in sorted(key.glob("round-*"))} == plans
    assert [(b["description"], b["errors"], b["n"]) for b in again.verified_bugs] == \
        [(b["description"], b["errors"], b["n"]) for b in report.verified_bugs]


@pytest.mark.trains
def test_a_class_only_audit_of_drawn_images_finds_the_bug_no_axis_names(tmp_path, default_spec_dict):
    """``axes: {}``: the prompt names the class only; the slice search tests the classes and
    discovery's descriptions, drawn as prompts ("a star, at night"), are verified on fresh images."""
    from vbugs_ray import api

    spec = {**default_spec_dict, "axes": {}, "prompt": "a {class}", "budget": 1200,
            "verify": {"images_per_hypothesis": 100, "rounds": 1, "replicate": False},
            "run": {"executor": "local", "shard_rows": 512}, "output_dir": str(tmp_path / "run")}
    report = api.audit(spec)
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["spec"]["axes"] == {}
    assert {tuple(s["predicates"]) for s in report.flagged_slices} <= {("class",)}
    assert any(b["class"] == "star" and "at night" in b["description"] for b in report.verified_bugs), \
        [b["description"] for b in report.verified_bugs]
    assert report.html_path is not None
