"""One registry per role: backends are built by name from the spec, like timm's create_model.

Entries are import paths, so naming a heavy backend (diffusers...) costs nothing until it is used.
A backend class may define:
- ``OPTIONS``: the option keys it takes (others are refused, naming the key);
- ``validate(role_spec, spec)`` (classmethod): raise SpecError for bad options, at spec load time;
- ``prepare(role_spec, spec, progress)`` (classmethod): one-time driver-side work (training,
  downloads) before any actor starts, so actors only load;
- ``__init__(role_spec, spec)``: load the model (once per actor).
"""

from __future__ import annotations

import importlib
from typing import Any

_BACKENDS: dict[str, dict[str, str]] = {
    "generator": {
        "toyworld": "vbugs_ray.roles.generators.toyworld:ToyWorldGenerator",
        "diffusers": "vbugs_ray.roles.generators.diffusers:DiffusersGenerator",
    },
    "classifier": {
        "toyworld_cnn": "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier",
        "timm": "vbugs_ray.roles.classifiers.timm:TimmClassifier",
        "torchvision": "vbugs_ray.roles.classifiers.torchvision:TorchvisionClassifier",
        "module": "vbugs_ray.roles.classifiers.module:ModuleClassifier",
    },
    "embedder": {
        "toyworld_clip": "vbugs_ray.roles.embedders.toyworld_clip:ToyWorldCLIPEmbedder",
        "open_clip": "vbugs_ray.roles.embedders.open_clip:OpenCLIPEmbedder",
    },
    "captioner": {
        "retrieval": "vbugs_ray.roles.captioners.retrieval:RetrievalCaptioner",
        "transformers": "vbugs_ray.roles.captioners.transformers:TransformersCaptioner",
    },
}


def register(role: str, name: str, target: str) -> None:
    """Add a backend: ``target`` is 'module:Class'."""
    _BACKENDS[role][name] = target


def backends(role: str) -> dict[str, str]:
    return dict(_BACKENDS[role])


def backend_class(role: str, name: str) -> type:
    module, _, attr = _BACKENDS[role][name].partition(":")
    return getattr(importlib.import_module(module), attr)


def validate(role: str, role_spec: Any, spec: Any) -> None:
    """Unknown option keys (against the backend's ``OPTIONS``), then the backend's own checks."""
    from vbugs_ray.spec import SpecError

    cls = backend_class(role, role_spec.backend)
    allowed = getattr(cls, "OPTIONS", None)
    for key in role_spec.options if allowed is not None else ():
        if key not in allowed:
            raise SpecError(f"{role}.options.{key}", f"unknown option; allowed: {', '.join(allowed)}")
    if hasattr(cls, "validate"):
        cls.validate(role_spec, spec)


def prepare(role: str, role_spec: Any, spec: Any, progress=print) -> None:
    cls = backend_class(role, role_spec.backend)
    if hasattr(cls, "prepare"):
        cls.prepare(role_spec, spec, progress)


def create(role: str, role_spec: Any, spec: Any) -> Any:
    return backend_class(role, role_spec.backend)(role_spec, spec)


def create_captioner(role_spec: Any, spec: Any, embedder: Any = None) -> Any:
    """Captioners describe slices through an embedder (retrieval: ``uses = 'embeddings'``) or
    from the images themselves (``uses = 'images'``; no embedder needed)."""
    return backend_class("captioner", role_spec.backend)(role_spec, spec, embedder)
