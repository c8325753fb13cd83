"""Real classifier backends (timm, torchvision, any module) built tiny, saved, loaded back through
the spec's loading path; class maps (superclasses); preprocessing; one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from vbugs_ray.grid import build_grid
from vbugs_ray.pipeline import ClassifyStage, GenerateStage
from vbugs_ray.roles import registry
from vbugs_ray.roles.classifiers._labels import build_class_map, imagenet_names
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.errors import SpecError
from vbugs_ray.roles.registry import validate_backends
from vbugs_ray.spec import parse_spec
from vbugs_ray.tiny import save_timm_classifier, tiny_convnet

# toy-world classes mapped onto ImageNet outputs; 'ring' is a superclass of 3 outputs
IMAGENET_MAP = {"circle": 0, "square": 1, "triangle": 2, "star": 3, "cross": 4, "ring": [5, 6, 7]}


def _spec(spec_dict, classifier):
    spec_dict["classifier"] = classifier
    spec_dict["budget"] = 48
    return validate_backends(parse_spec(spec_dict))


def _images(spec, n=12, rows=None):
    grid = build_grid(spec)
    grid = grid.slice(0, n) if rows is None else grid.take(list(rows))
    batch = {name: grid.column(name).to_numpy(zero_copy_only=False) for name in grid.column_names}
    return GenerateStage(spec)(batch)


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    return save_timm_classifier(tmp_path_factory.mktemp("timm") / "test_resnet.pth")


def test_timm_checkpoint_loads_and_scores_superclasses(spec_dict, timm_checkpoint):
    spec = _spec(spec_dict, {"backend": "timm", "options": {
        "model": "test_resnet", "checkpoint": str(timm_checkpoint), "class_map": IMAGENET_MAP}})
    registry.prepare("classifier", spec.classifier, spec, progress=lambda _: None)
    stage = ClassifyStage(spec)
    # the checkpoint's weights, not a fresh random init, are what the backend holds
    saved = torch.load(timm_checkpoint, weights_only=True)
    held = stage.backend.model.state_dict()
    assert all(torch.equal(saved[k], held[k]) for k in saved)
    batch = stage(_images(spec))
    probs = stage.backend.predict_proba(batch["image"])
    assert probs.shape == (12, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = batch["label"]
    expected = np.array([probs[i, np.atleast_1d(IMAGENET_MAP[spec.classes[c]])].sum() for i, c in enumerate(labels)])
    np.testing.assert_allclose(batch["p_true"], expected, rtol=1e-4, atol=1e-7)
    top1 = probs.argmax(axis=1)
    assert list(batch["pred_index"]) == list(top1)
    names = imagenet_names()
    assert list(batch["pred_name"]) == [names[i] for i in top1]
    in_class = np.array([top1[i] in np.atleast_1d(IMAGENET_MAP[spec.classes[c]]) for i, c in enumerate(labels)])
    np.testing.assert_array_equal(batch["error"], ~in_class)
    assert all(len(t.split("\t")) == 5 and t.split("\t")[0] == n for t, n in zip(batch["top5"], batch["pred_name"]))


def test_batched_preprocessing_matches_timms_own_transform():
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=timm.create_model("test_resnet", pretrained=False))
    rng = np.random.default_rng(0)
    small = (rng.random((3, 8, 8, 3)) * 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((64, 48), Image.BICUBIC)) for im in small])
    ours = EvalTransform.from_timm_config(cfg)(images, torch.device("cpu"), torch.float32)
    reference = torch.stack([create_transform(**cfg)(Image.fromarray(im)) for im in images])
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.005  # resampling differs by rounding only


def _spread_mobilenet(num_classes: int) -> torch.nn.Module:
    """A random mobilenet_v3_small whose outputs depend on its input: at torchvision's init the
    activations vanish through the blocks (eval-mode batch norm with unit running variance) and the
    head's weights are tiny, so every image scores 1/6 per class and a value check would see nothing.
    Batch-norm statistics are set from one batch of noise and the linear layers re-drawn larger
    (probabilities about 0.07-0.4 on toy-world images)."""
    import torchvision

    model = torchvision.models.get_model("mobilenet_v3_small", num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1 / module.in_features ** 0.5)
    model.train()
    with torch.no_grad():
        model((torch.rand(16, 3, 56, 56) - 0.5) / 0.25)
    return model.eval()


def _reference_proba(model: torch.nn.Module, images: np.ndarray, size: int, mean, std) -> np.ndarray:
    """The evaluation preprocessing written out with torchvision's functional ops (resize the shorter
    side to floor(size / 0.875), antialiased bilinear; centre crop; scale to [0, 1]; normalise), then
    softmax of the logits: what the backends must compute."""
    from torchvision.transforms.v2 import functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = F.resize(x, [int(size / 0.875)], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    x = F.center_crop(x, [size, size]).float() / 255
    x = F.normalize(x, mean, std)
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=1).numpy()


def test_torchvision_state_dict_and_module_backends(spec_dict, tmp_path):
    """Both backends load the saved weights, preprocess as configured and score the spec's classes:
    their probabilities match the same model rebuilt here from the file with the preprocessing
    written out independently, and ClassifyStage's p_true / pred / error follow from them and the
    class map (torchvision: output i is class i by label name; module: class i -> output i, outputs
    6 and 7 count for no class)."""
    import torchvision
    from PIL import Image
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    tv_path = tmp_path / "mnv3.pth"
    torch.save(_spread_mobilenet(6).state_dict(), tv_path)
    mod_path = tmp_path / "convnet.safetensors"
    convnet = tiny_convnet(num_classes=8)
    with torch.no_grad():
        convnet[-1].weight.mul_(5)  # spread the logits: top-1 varies across images
    save_file(convnet.state_dict(), str(mod_path))
    size, mean, std = 56, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    preprocess = {"size": size, "mean": mean, "std": std}
    classes = list(spec_dict["classes"])

    reference_tv = torchvision.models.get_model("mobilenet_v3_small", num_classes=6)
    reference_tv.load_state_dict(torch.load(tv_path, weights_only=True))
    reference_mod = tiny_convnet(num_classes=8)
    reference_mod.load_state_dict(load_file(str(mod_path)))
    for classifier, reference, n_out in (
        ({"backend": "torchvision", "options": {"model": "mobilenet_v3_small", "num_classes": 6,
                                                "checkpoint": str(tv_path), "preprocess": preprocess,
                                                "labels": classes}}, reference_tv, 6),
        ({"backend": "module", "options": {"callable": "vbugs_ray.tiny:tiny_convnet", "kwargs": {"num_classes": 8},
                                           "checkpoint": str(mod_path), "preprocess": preprocess,
                                           "class_map": {c: i for i, c in enumerate(classes)}}}, reference_mod, 8),
    ):
        spec = _spec(dict(spec_dict), classifier)
        stage = ClassifyStage(spec)
        batch = stage(_images(spec, rows=range(0, 48, 4)))  # 12 rows across the classes
        labels = np.asarray(batch["label"])
        assert len(set(labels.tolist())) > 1
        # the same scenes stretched to 70 x 90: the shorter side is resized (70 -> 64) and both sides cropped
        odd_sized = np.stack([np.asarray(Image.fromarray(im).resize((90, 70), Image.BICUBIC)) for im in batch["image"]])
        name = classifier["backend"]
        for images in (batch["image"], odd_sized):
            expected = _reference_proba(reference, images, size, mean, std)
            got = stage.backend.predict_proba(images)
            assert got.shape == (len(images), n_out)
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name}: probabilities")
            assert np.ptp(expected) > 0.05  # far from uniform: the check above can see a change
        probs = _reference_proba(reference, batch["image"], size, mean, std)
        top1 = probs.argmax(axis=1)
        output_names = classes if name == "torchvision" else [f"output_{i}" for i in range(n_out)]
        np.testing.assert_allclose(batch["p_true"], probs[np.arange(len(labels)), labels], atol=1e-5)
        np.testing.assert_allclose(batch["loss"], -np.log(batch["p_true"].astype(np.float64)), rtol=1e-5)
        assert list(batch["pred_index"]) == list(top1)
        assert list(batch["pred_label"]) == [i if i < len(classes) else -1 for i in top1]
        assert list(batch["pred_name"]) == [output_names[i] for i in top1]
        assert list(batch["pred"]) == [classes[i] if i < len(classes) else output_names[i] for i in top1]
        np.testing.assert_array_equal(batch["error"], top1 != labels)
        assert batch["error"].any() and not batch["error"].all(), f"{name}: top-1 {top1}, labels {labels}"


def test_class_map_rules():
    names = imagenet_names()
    cmap = build_class_map(["tench", "dog"], names, {"dog": list(range(151, 269))})
    assert cmap.member.sum(axis=1).tolist() == [1, 118]
    assert cmap.class_of_output[0] == 0 and cmap.class_of_output[151] == 1 and cmap.class_of_output[500] == -1
    probs = np.full((1, 1000), 1 / 1000)
    np.testing.assert_allclose(cmap.p_true(probs, np.array([1])), [0.118])
    with pytest.raises(SpecError, match="names several outputs"):
        build_class_map(["crane"], names, None)  # bird and machine: ask for indices
    with pytest.raises(SpecError, match="also mapped"):
        build_class_map(["a", "b"], names, {"a": [1, 2], "b": 2})
    with pytest.raises(SpecError, match="no model output is named"):
        build_class_map(["unicorn"], names, None)


@pytest.mark.parametrize("classifier, field", [
    ({"backend": "timm", "options": {"model": "resnet5O"}}, "classifier.options.model"),
    ({"backend": "timm", "options": {"model": "resnet50", "checkpoint": "x.pth", "colour": 1}}, "classifier.options.colour"),
    ({"backend": "torchvision", "options": {"model": "resnet50", "weights": "IMAGENET9K"}}, "classifier.options.weights"),
    ({"backend": "module", "options": {"callable": "nowhere.mod:build", "preprocess": {"size": 32}}},
     "classifier.options.callable"),
    ({"backend": "timm", "options": {"model": "resnet50", "class_map": {"circle": 1000}}}, "classifier.options.class_map.circle"),
])
def test_bad_classifier_options_name_the_field(spec_dict, classifier, field):
    with pytest.raises(SpecError) as err:
        _spec(spec_dict, classifier)
    assert err.value.field == field and "\n" not in str(err.value)


@pytest.mark.cli
def test_unknown_model_and_unreadable_weights_are_one_line_cli_errors(spec_dict, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    spec_dict["classifier"] = {"backend": "timm", "options": {"model": "test_resnet", "checkpoint": str(bad),
                                                               "class_map": IMAGENET_MAP}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict))
    run = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", str(path), "--out", str(tmp_path / "run"),
                          "--executor", "local"], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert "classifier.options.checkpoint" in lines[-1] and "cannot read weights file" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "run" / "rows" / "shard-00000").exists()  # nothing half-written

    spec_dict["classifier"]["options"]["model"] = "not_a_timm_model"
    path.write_text(yaml.safe_dump(spec_dict))
    run = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "validate", str(path)], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "unknown timm model 'not_a_timm_model'" in run.stderr
