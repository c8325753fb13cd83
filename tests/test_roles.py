"""Role settings the README promises: the captioner's batch size and concurrency, and the
classifier skipping rows the CLIP filter rejected."""

import numpy as np
import pytest

from vbugs_ray.errors import SpecError
from vbugs_ray.pipeline import ClassifyStage
from vbugs_ray.roles import registry
from vbugs_ray.spec import parse_spec


def test_captioner_concurrency_sizes_its_actor_pool(tiny_spec_dict):
    """The captioner is an actor pool like the model stages (tests/test_real_audit.py runs two)."""
    tiny_spec_dict["captioner"]["concurrency"] = 2
    assert parse_spec(tiny_spec_dict).captioner.concurrency == 2
    tiny_spec_dict["captioner"]["concurrency"] = 0
    with pytest.raises(SpecError) as err:
        parse_spec(tiny_spec_dict)
    assert err.value.field == "captioner.concurrency"


def test_image_captioner_calls_its_model_batch_size_images_at_a_time(tiny_spec_dict):
    tiny_spec_dict["captioner"]["batch_size"] = 3
    spec = parse_spec(tiny_spec_dict)
    captioner = registry.create("captioner", spec.captioner, spec)
    sizes = []
    generate = captioner.model.generate

    def counting(**inputs):
        sizes.append(len(inputs["pixel_values"]))
        return generate(**inputs)

    captioner.model.generate = counting
    images = (np.random.default_rng(0).random((7, 32, 32, 3)) * 255).astype(np.uint8)
    assert len(captioner.caption_each(images)) == 7
    assert sizes == [3, 3, 1]


class _Counting:
    """A classifier backend that records which images it was asked about."""

    def __init__(self, n_classes):
        from vbugs_ray.roles.classifiers._labels import ClassMap

        names = [f"c{i}" for i in range(n_classes)]
        self.class_map = ClassMap(names, names, [[i] for i in range(n_classes)])
        self.seen = []

    def predict_proba(self, images):
        self.seen.append(images.copy())
        probs = np.full((len(images), len(self.class_map.classes)), 0.1)
        probs[:, 0] = 1.0
        return probs / probs.sum(axis=1, keepdims=True)


def test_classifier_skips_rows_the_filter_marked_invalid(monkeypatch, spec_dict):
    spec = parse_spec(spec_dict)
    backend = _Counting(len(spec.classes))
    monkeypatch.setattr(registry, "create", lambda *a, **k: backend)
    stage = ClassifyStage(spec)
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    valid = np.array([True, False, True, False, True])
    out = stage({"image": images, "label": np.array([0, 0, 1, 1, 0]), "valid": valid})
    assert [int(im[0, 0, 0]) for im in backend.seen[0]] == [0, 2, 4]  # the valid rows' images only
    assert out["pred_index"].tolist() == [0, -1, 0, -1, 0]
    assert out["error"].tolist() == [False, False, True, False, False]
    assert np.isnan(out["p_true"][~valid]).all() and np.isnan(out["loss"][~valid]).all()
    assert list(out["pred"][~valid]) == ["", ""] and list(out["top5"][~valid]) == ["", ""]
    np.testing.assert_allclose(out["p_true"][valid], [1 / 1.5, 0.1 / 1.5, 1 / 1.5], rtol=1e-6)
