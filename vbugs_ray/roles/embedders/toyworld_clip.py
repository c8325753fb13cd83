"""Embedder backend ``toyworld_clip``: the toy-world open_clip model, loaded with
``open_clip.create_model_and_transforms(name, pretrained=checkpoint)`` like any open_clip model.

Options: ``steps`` (training steps, 2000) and ``seed`` (0). Training runs once on the driver and
is cached (about 3 minutes on 2 CPU cores); text embeddings are cached per actor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import check_seed, option
from vbugs_ray.roles.embedders._open_clip_model import OpenCLIPModel
from vbugs_ray.toyworld import clip as toyclip
from vbugs_ray.toyworld import renderer


def training_config(options, spec) -> dict:
    return toyclip.training_config(steps=options.steps, seed=options.seed,
                                   resolution=renderer.resolution_in(spec.generator.options))


class ToyWorldCLIPEmbedder(OpenCLIPModel):
    @dataclass(frozen=True)
    class Options:
        steps: int = option(2000, kind=int, low=0)
        seed: int = option(0, parse=check_seed)

    @classmethod
    def check(cls, options, spec) -> None:
        from vbugs_ray.roles.registry import backend_class

        # the toy renderer, or a backend built on it (a registered subclass): they say so
        if not getattr(backend_class("generator", spec.generator.backend), "draws_toy_world", False):
            raise SpecError("embedder.backend", "toyworld_clip only knows toy-world images; use open_clip for real generators")

    @classmethod
    def prepare(cls, options, spec, progress=print) -> list:
        return [toyclip.checkpoint_path(training_config(options, spec), progress)]

    def __init__(self, options, role_spec, spec):
        toyclip.register_config()
        path = toyclip.checkpoint_path(training_config(options, spec), progress=lambda _: None)
        self._load("embedder", role_spec, toyclip.MODEL_NAME, str(path))

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """The toy CLIP was trained on area-resized thumbnails: keep that resampling."""
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        return toyclip.preprocess(images, size, cfg["mean"], cfg["std"]).to(self.device, self.dtype)
