"""The toy world's models: planted-bias sampling, the biased classifier, the toy CLIP."""

import numpy as np
import pytest
import torch

from vbugs_ray.roles import registry
from vbugs_ray.roles.classifiers.toyworld_cnn import parse_bugs
from vbugs_ray.toyworld import classifier as toy
from vbugs_ray.toyworld import clip as toyclip
from vbugs_ray.toyworld import renderer

CLASSES = list(renderer.VOCABULARY["class"])


def test_under_representation_removes_matching_images():
    bugs = parse_bugs([{"where": {"class": "star", "lighting": "night"}, "keep": 0.0}])
    sample = toy.biased_sample(6000, CLASSES, bugs, seed=0)
    assert len(sample) == 6000
    assert not any(p["class"] == "star" and p["lighting"] == "night" for p in sample)
    assert sum(p["class"] == "star" for p in sample) > 700  # other starry images remain
    assert sum(p["lighting"] == "night" for p in sample) > 1000


def test_partial_keep_keeps_that_fraction():
    bugs = parse_bugs([{"where": {"class": "ring"}, "keep": 0.25}])
    sample = toy.biased_sample(12000, CLASSES, bugs, seed=1)
    rings = sum(p["class"] == "ring" for p in sample)
    others = np.mean([sum(p["class"] == c for p in sample) for c in CLASSES if c != "ring"])
    assert rings / others == pytest.approx(0.25, abs=0.04)


def test_spurious_correlation_sets_the_share():
    bugs = parse_bugs([{"where": {"class": "square"}, "spurious": {"background": "grass"}, "strength": 0.9}])
    sample = toy.biased_sample(12000, CLASSES, bugs, seed=2)
    squares = [p for p in sample if p["class"] == "square"]
    share = np.mean([p["background"] == "grass" for p in squares])
    assert share == pytest.approx(0.9, abs=0.03)
    circles = [p for p in sample if p["class"] == "circle"]
    assert np.mean([p["background"] == "grass" for p in circles]) == pytest.approx(0.2, abs=0.04)


def _error_rate(model, props, seed0):
    images = renderer.render(props, list(range(seed0, seed0 + len(props))))
    with torch.no_grad():
        pred = model(toy.to_tensor(images)).argmax(1).numpy()
    labels = np.array([CLASSES.index(p["class"]) for p in props])
    return float(np.mean(pred != labels))


@pytest.mark.trains
def test_planted_bias_training_plants_the_bugs(default_spec):
    """The default spec's classifier fails more where the bugs are planted than elsewhere."""
    from vbugs_ray.roles.classifiers.toyworld_cnn import training_config

    options = registry.options_of("classifier", default_spec.classifier)
    model = toy.load_or_train(training_config(options, default_spec))
    rng = np.random.default_rng(11)
    star_night = renderer.sample_properties(300, rng, fixed={"class": ["star"], "lighting": ["night"]})
    square_off_grass = renderer.sample_properties(300, rng, fixed={"class": ["square"],
                                                                   "background": ["snow", "sand", "water", "brick"]})
    elsewhere = [p for p in renderer.sample_properties(1500, rng)
                 if not (p["class"] == "star" and p["lighting"] == "night") and p["class"] != "square"]
    base = _error_rate(model, elsewhere, 10_000)
    assert base < 0.08
    assert _error_rate(model, star_night, 20_000) > base + 0.05
    assert _error_rate(model, square_off_grass, 30_000) > base + 0.05


@pytest.mark.trains
def test_toy_clip_zero_shot(default_spec):
    """Zero-shot on fresh renders: class > 90%, the spec's axes and size > 80% (prompt ensembles).
    (Clutter, the count of small distractor discs, reaches about 70%: not asserted.)"""
    registry.prepare("embedder", default_spec.embedder, default_spec, progress=lambda _: None)
    embedder = registry.create("embedder", default_spec.embedder, default_spec)
    rng = np.random.default_rng(123)
    props = renderer.sample_properties(1200, rng)
    feats = embedder.embed_images(renderer.render(props, list(range(50_000, 51_200))))
    for prop in dict.fromkeys(("class", *default_spec.axis_names, "size")):
        values = list(renderer.VOCABULARY[prop])
        text = np.stack([embedder.embed_texts(toyclip.ensemble_prompts(prop, v)).mean(0) for v in values])
        pred = (feats @ text.T).argmax(1)
        truth = np.array([values.index(p[prop]) for p in props])
        accuracy = float(np.mean(pred == truth))
        assert accuracy > (0.9 if prop == "class" else 0.8), f"{prop}: zero-shot accuracy {accuracy:.3f}"


@pytest.mark.trains
def test_retrieval_captioner_names_what_sets_a_slice_apart(default_spec):
    embedder = registry.create("embedder", default_spec.embedder, default_spec)
    captioner = registry.create("captioner", default_spec.captioner, default_spec, embedder=embedder)
    rng = np.random.default_rng(5)
    inside = renderer.sample_properties(200, rng, fixed={"class": ["star"], "lighting": ["night"]})
    rest = renderer.sample_properties(600, rng)
    caption = captioner.rank(embedder.embed_images(renderer.render(inside, list(range(200)))),
                                embedder.embed_images(renderer.render(rest, list(range(1000, 1600)))))
    assert set(caption[:2]) == {"star", "at night"}
