"""Embedder backend ``data_clip``: the toy CLIP's open_clip config trained on the audit's own
dataset, captions in the spec's words (for corruptions: each training image under several
corruptions and severities, named by the spec's prompt), so that its text side knows the words
the filter, the captioner and the diagnosis use. For the real-data examples; bring open_clip
for your own data.

Options: ``steps`` (800), ``pool`` (training pairs, 12000), ``seed`` (0). Trained once on the
driver and cached by its config (the generator's options, the classes, the axes and the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.cache import trained
from vbugs_ray.datasets import training
from vbugs_ray.errors import SpecError
from vbugs_ray.fields import check_seed, option
from vbugs_ray.roles.embedders._open_clip_model import OpenCLIPModel
from vbugs_ray.toyworld import clip as toyclip


def _config(options, spec) -> dict:
    from vbugs_ray.datasets.sources import fingerprint
    from vbugs_ray.roles import registry

    data = spec.to_dict()
    source = registry.options_of("generator", spec.generator).source
    return {"model": "data-clip-v2", "data": fingerprint(source), "tower": toyclip.MODEL_NAME, "generator": data["generator"]["backend"],
            "options": data["generator"]["options"], "classes": data["classes"], "axes": data["axes"],
            "prompt": spec.prompt, "seed": spec.seed, "train_seed": options.seed, "steps": options.steps,
            "pool": options.pool, "batch_size": 126, "lr": 2e-3}


def _path(options, spec, progress):
    from vbugs_ray.roles import registry

    cls = registry.backend_class("generator", spec.generator.backend)
    gen_options = registry.options_of("generator", spec.generator)
    config = _config(options, spec)
    pool = lambda: cls.training_pool(gen_options, spec, options.pool, options.seed)  # noqa: E731
    return trained("data-clip", config, lambda: training.train_clip(config, pool, progress), progress)


class DataCLIPEmbedder(OpenCLIPModel):
    @dataclass(frozen=True)
    class Options:
        steps: int = option(800, kind=int, low=1, high=1_000_000)
        pool: int = option(12000, kind=int, low=16, high=10_000_000)
        seed: int = option(0, parse=check_seed)

    @classmethod
    def check(cls, options, spec) -> None:
        from vbugs_ray.roles.registry import backend_class

        if not hasattr(backend_class("generator", spec.generator.backend), "training_pool"):
            raise SpecError("embedder.backend", "data_clip trains on a dataset generator's images (dataset, "
                                                "corruptions); use open_clip for other generators")

    @classmethod
    def prepare(cls, options, spec, progress=print) -> list:
        return [_path(options, spec, progress)]

    def __init__(self, options, role_spec, spec):
        toyclip.register_config()
        self._load("embedder", role_spec, toyclip.MODEL_NAME, str(_path(options, spec, lambda _: None)))

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """Area-resized like the toy CLIP's training images."""
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
        return toyclip.preprocess(images, size, cfg["mean"], cfg["std"]).to(self.device, self.dtype)
