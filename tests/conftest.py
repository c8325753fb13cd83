"""Shared fixtures: one local Ray per test session, the default toy-world spec as data, and a
check that every test is marked for the costly things it does (``ray``, ``cli``, ``trains``),
so that a marker can be trusted to select or skip them."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from vbugs_ray.spec import DEFAULT_SPEC, parse_spec


@pytest.fixture(autouse=True)
def _marked_for_what_it_does(request, monkeypatch):
    """Fail a test that starts Ray, runs the vbugs command or trains toy models unmarked."""
    marks = {m.name for m in request.node.iter_markers()}

    def require(mark: str, doing: str) -> None:
        if mark not in marks:
            pytest.fail(f"{request.node.nodeid} {doing} but is not marked @pytest.mark.{mark}", pytrace=False)

    if "ray_session" in request.fixturenames:
        require("ray", "uses Ray")
    popen = subprocess.Popen

    class CheckedPopen(popen):
        def __init__(self, args, *rest, **kwargs):
            if any("vbugs" in str(a) for a in (args if isinstance(args, (list, tuple)) else [args])):
                require("cli", "runs the vbugs command")
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", CheckedPopen)
    from vbugs_ray.datasets import training
    from vbugs_ray.roles.embedders import data_clip
    from vbugs_ray.toyworld import classifier, clip

    for module in (classifier, clip, training, data_clip):
        trained = module.trained

        def checked(*args, _trained=trained, **kwargs):
            require("trains", "loads or trains a toy-world model")
            return _trained(*args, **kwargs)

        monkeypatch.setattr(module, "trained", checked)
    if "ray" in sys.modules:
        ray = sys.modules["ray"]
        init = ray.init

        def checked_init(*args, **kwargs):
            require("ray", "starts Ray")
            return init(*args, **kwargs)

        monkeypatch.setattr(ray, "init", checked_init)


@pytest.fixture
def restore_registry():
    """The backend registry as it was before the test (a test's register_backend stays in it)."""
    from vbugs_ray.roles import registry

    saved = {role: dict(names) for role, names in registry._BACKENDS.items()}
    yield
    for role, names in saved.items():
        registry._BACKENDS[role].clear()
        registry._BACKENDS[role].update(names)


@pytest.fixture(scope="session")
def default_spec_dict() -> dict:
    return yaml.safe_load(DEFAULT_SPEC.read_text())


@pytest.fixture
def spec_dict(default_spec_dict) -> dict:
    """A mutable copy of the default spec mapping."""
    return copy.deepcopy(default_spec_dict)


@pytest.fixture(scope="session")
def default_spec(default_spec_dict):
    return parse_spec(copy.deepcopy(default_spec_dict))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`vbugs audit` of the shipped demo spec, once per session, for the tests that read its
    results (report.json, report.html). The local executor: the same stages as `make demo`
    without Ray's start-up. Its users are marked cli and trains."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", "--executor", "local", "--out", str(run_dir)],
                          capture_output=True, text=True)
    return run_dir, done


@pytest.fixture(scope="session")
def ray_session():
    """Ray starts once per session with more logical CPUs than cores (2-core CI machines) and one
    logical GPU, so GPU-stage scheduling (fractional num_gpus) runs on a machine without one."""
    import ray

    ray.init(address="local", num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Tiny random-weight real backends saved to disk, as a user's local model folders would be."""
    from vbugs_ray import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    clip_config, clip_weights = tiny.save_open_clip(root / "clip")
    return {
        "sd": str(tiny.save_tiny_sd(root / "sd")),
        "timm": str(tiny.save_timm_classifier(root / "timm" / "test_resnet.pth")),
        "clip_config": str(clip_config),
        "clip_weights": str(clip_weights),
        "blip": str(tiny.save_tiny_blip(root / "blip")),
    }


@pytest.fixture
def tiny_spec_dict(tiny_models) -> dict:
    """A small audit of real backend classes (diffusers, timm, open_clip) at toy size."""
    return {
        "name": "tiny-real",
        "classes": ["cat", "dog"],
        "axes": {"background": {"grass": "on grass", "snow": "in the snow"},
                 "lighting": {"day": "in daylight", "night": "at night"}},
        "prompt": "a photo of a {class} {background} {lighting}",
        "images_per_cell": 4,
        "generator": {"backend": "diffusers", "batch_size": 8,
                      "options": {"model": tiny_models["sd"], "steps": 2, "guidance_scale": 2.0}},
        "classifier": {"backend": "timm", "batch_size": 8,
                       "options": {"model": "test_resnet", "checkpoint": tiny_models["timm"],
                                   "class_map": {"cat": 0, "dog": [1, 2]}}},
        "embedder": {"backend": "open_clip", "batch_size": 8,
                     "options": {"model": "vbugs-tiny-clip", "config": tiny_models["clip_config"],
                                 "pretrained": tiny_models["clip_weights"]}},
        "captioner": {"backend": "transformers",
                      "options": {"model": tiny_models["blip"], "max_new_tokens": 6, "num_beams": 1,
                                  "images_per_slice": 4}},
        "search": {"min_support": 4},
        "verify": False,  # tests of verification build their own spec
        "run": {"executor": "local", "shard_rows": 16},
    }
