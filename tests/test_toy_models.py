"""The toy world's models: planted-bias sampling, the biased classifier, the toy CLIP."""

import numpy as np
import pytest
import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.roles import registry
from vbugs_ray.roles.classifiers.toyworld_cnn import parse_bugs
from vbugs_ray.roles.registry import validate_backends
from vbugs_ray.spec import parse_spec
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


def test_mislabelled_subgroup_relabels_that_share():
    """share of the matching training images carries the relabel; the images still show the
    true class, and nothing outside where is relabelled."""
    bugs = parse_bugs([{"where": {"class": "star", "background": "snow"}, "relabel": "circle", "share": 0.9}])
    assert bugs[0].kind == "mislabelled_subgroup"
    sample = toy.biased_sample(30000, CLASSES, bugs, seed=3)
    matching = [p for p in sample if p["class"] == "star" and p["background"] == "snow"]
    assert len(matching) == pytest.approx(1000, rel=0.15)  # the images themselves are not skewed
    assert np.mean([p["label"] == "circle" for p in matching]) == pytest.approx(0.9, abs=0.03)
    assert {p["label"] for p in matching} == {"circle", "star"}
    assert all(p["label"] == p["class"] for p in sample if not (p["class"] == "star" and p["background"] == "snow"))
    assert toy.render_properties(matching[0]) == {k: matching[0][k] for k in renderer.PROPERTIES}


def test_older_bug_kinds_label_images_as_what_they_show():
    bugs = parse_bugs([{"where": {"class": "star", "lighting": "night"}, "keep": 0.0},
                       {"where": {"class": "square"}, "spurious": {"background": "grass"}, "strength": 0.97}])
    sample = toy.biased_sample(3000, CLASSES, bugs, seed=0)
    assert all(p["label"] == p["class"] for p in sample)
    # their training config is what it was before mislabelled subgroups existed (cache keys hold)
    config = toy.training_config(CLASSES, bugs, 10000, 6, 0, 64)
    assert config["bugs"] == [{"where": {"class": "star", "lighting": "night"}, "keep": 0.0},
                              {"where": {"class": "square"}, "spurious": {"background": "grass"}, "strength": 0.97}]


def test_planted_bugs_round_trip_through_the_training_config():
    raw = [{"where": {"class": "star", "background": "snow"}, "relabel": "circle", "share": 0.9},
           {"where": {"class": "triangle", "clutter": "heavy"}, "keep": 0.0},
           {"where": {"class": "square", "size": "small"}, "spurious": {"background": "grass"}, "strength": 0.8}]
    bugs = parse_bugs(raw)
    assert [b.kind for b in bugs] == ["mislabelled_subgroup", "under_representation", "spurious_correlation"]
    config = toy.training_config(CLASSES, bugs, 1000, 1, 0, 64)
    assert config["bugs"] == raw
    assert [toy.PlantedBug(**b) for b in config["bugs"]] == bugs


@pytest.mark.parametrize("bug, field, words", [
    ({"where": {"class": "star"}, "relabel": "hexagon", "share": 0.5}, "relabel", "got 'hexagon'"),
    ({"where": {"class": "star"}, "relabel": "star", "share": 0.5}, "relabel", "equals where.class"),
    ({"where": {"background": "snow"}, "relabel": "circle", "share": 0.5}, "where", "needs where.class"),
    ({"where": {"class": "star"}, "relabel": "circle", "share": 0}, "share", "(0, 1]"),
    ({"where": {"class": "star"}, "relabel": "circle", "share": 1.2}, "share", "(0, 1]"),
    ({"where": {"class": "star"}, "relabel": "circle"}, "share", "(0, 1]"),
    ({"where": {"class": "star"}, "share": 0.5}, "relabel", "got None"),
    ({"where": {"class": "star"}, "keep": 0.0, "relabel": "circle", "share": 0.5}, "relabel", "mixes"),
    ({"where": {"class": "star"}, "spurious": {"background": "snow"}, "strength": 0.9, "share": 0.5}, "share", "mixes"),
    ({"where": {"class": "star"}, "keep": 0.2, "strength": 0.9}, "strength", "mixes"),
    ({"where": {"class": "star", "clutter": "lots"}, "keep": 0.0}, "where.clutter", "unknown value"),
])
def test_bug_errors_name_the_field(bug, field, words):
    with pytest.raises(SpecError) as err:
        parse_bugs([bug])
    assert err.value.field == f"classifier.options.bugs[0].{field}"
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_relabel_must_be_one_of_the_spec_classes(spec_dict):
    spec_dict["classes"] = ["circle", "square", "triangle", "star", "cross"]
    spec_dict["classifier"]["options"]["bugs"] = [
        {"where": {"class": "star", "background": "snow"}, "relabel": "ring", "share": 0.9}]
    with pytest.raises(SpecError) as err:
        validate_backends(parse_spec(spec_dict))
    assert err.value.field == "classifier.options.bugs[0].relabel"
    assert "not one of the spec's classes" in str(err.value)
    spec_dict["classifier"]["options"]["bugs"][0]["relabel"] = "circle"
    validate_backends(parse_spec(spec_dict))


def _predictions(model, props, seed0):
    images = renderer.render(props, list(range(seed0, seed0 + len(props))))
    with torch.no_grad():
        return model(toy.to_tensor(images)).argmax(1).numpy()


def _error_rate(model, props, seed0):
    labels = np.array([CLASSES.index(p["class"]) for p in props])
    return float(np.mean(_predictions(model, props, seed0) != labels))


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
def test_clutter_and_mislabel_bugs_take():
    """A bug whose where names a property the audit has no axis for (clutter) and a mislabelled
    subgroup both take: the classifier fails far more inside their where than elsewhere."""
    bugs = parse_bugs([{"where": {"class": "triangle", "clutter": "heavy"}, "keep": 0.0},
                       {"where": {"class": "star", "background": "snow"}, "relabel": "circle", "share": 0.9}])
    model = toy.load_or_train(toy.training_config(CLASSES, bugs, train_images=8000, epochs=5, seed=0,
                                                  resolution=renderer.DEFAULT_RESOLUTION))
    rng = np.random.default_rng(11)
    heavy_triangles = renderer.sample_properties(300, rng, fixed={"class": ["triangle"], "clutter": ["heavy"]})
    snowy_stars = renderer.sample_properties(300, rng, fixed={"class": ["star"], "background": ["snow"]})
    elsewhere = [p for p in renderer.sample_properties(1500, rng)
                 if not (p["class"] == "triangle" and p["clutter"] == "heavy")
                 and not (p["class"] == "star" and p["background"] == "snow")]
    base = _error_rate(model, elsewhere, 10_000)
    assert base < 0.08
    assert _error_rate(model, heavy_triangles, 20_000) > base + 0.12  # measured: 0.35 vs 0.04
    pred = _predictions(model, snowy_stars, 30_000)
    assert np.mean(pred != CLASSES.index("star")) > 0.6  # measured: 0.83
    assert np.mean(pred == CLASSES.index("circle")) > 0.6  # called circles, as they were labelled


@pytest.mark.trains
def test_toy_clip_zero_shot(default_spec):
    """Zero-shot on fresh renders (prompt ensembles): class > 90%, and >= 85% for every property
    the renderer draws, the spec's axes or not (size, clutter: the count of small distractor discs)."""
    registry.prepare("embedder", default_spec.embedder, default_spec, progress=lambda _: None)
    embedder = registry.create("embedder", default_spec.embedder, default_spec)
    rng = np.random.default_rng(123)
    props = renderer.sample_properties(1200, rng)
    feats = embedder.embed_images(renderer.render(props, list(range(50_000, 51_200))))
    accuracies = {}
    for prop in renderer.PROPERTIES:
        values = list(renderer.VOCABULARY[prop])
        text = np.stack([embedder.embed_texts(toyclip.ensemble_prompts(prop, v)).mean(0) for v in values])
        pred = (feats @ text.T).argmax(1)
        truth = np.array([values.index(p[prop]) for p in props])
        accuracies[prop] = round(float(np.mean(pred == truth)), 3)
    assert accuracies["class"] > 0.9, accuracies
    assert all(accuracy >= 0.85 for accuracy in accuracies.values()), accuracies


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
