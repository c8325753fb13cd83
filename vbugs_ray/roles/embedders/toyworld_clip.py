"""Embedder backend ``toyworld_clip``: the toy-world open_clip model, loaded with
``open_clip.create_model_and_transforms(name, pretrained=checkpoint)`` like any open_clip model.

Options: ``steps`` (training steps, 1000) and ``seed`` (0). Training runs once on the driver and
is cached; text embeddings are cached per actor.
"""

from __future__ import annotations

import numpy as np
import torch

from vbugs_ray.roles.embedders.open_clip import OpenCLIPEmbedder
from vbugs_ray.roles.generators.toyworld import resolution_of
from vbugs_ray.spec import SpecError
from vbugs_ray.toyworld import clip as toyclip

OPTIONS = ("steps", "seed")


def training_config(role_spec, spec) -> dict:
    opts = role_spec.options
    for key in OPTIONS:
        value = opts.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(f"embedder.options.{key}", f"expected a non-negative integer; got {value!r}")
    return toyclip.training_config(steps=opts.get("steps", 1000), seed=opts.get("seed", 0),
                                   resolution=resolution_of(spec.generator))


class ToyWorldCLIPEmbedder(OpenCLIPEmbedder):
    OPTIONS = OPTIONS  # option keys the registry accepts for this backend

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        if spec.generator.backend != "toyworld":
            raise SpecError("embedder.backend", "toyworld_clip only knows toy-world images; use open_clip for real generators")
        training_config(role_spec, spec)

    @classmethod
    def prepare(cls, role_spec, spec, progress=print) -> None:
        toyclip.checkpoint_path(training_config(role_spec, spec), progress)

    def __init__(self, role_spec, spec):
        toyclip.register_config()
        path = toyclip.checkpoint_path(training_config(role_spec, spec), progress=lambda _: None)
        self._load("embedder", role_spec, toyclip.MODEL_NAME, str(path))

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """The toy CLIP was trained on area-resized thumbnails: keep that resampling."""
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        return toyclip.preprocess(images, size, cfg["mean"], cfg["std"]).to(self.device, self.dtype)
