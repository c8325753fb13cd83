"""Embedder backend ``toyworld_clip``: the toy-world open_clip model, loaded with
``open_clip.create_model_and_transforms(name, pretrained=checkpoint)`` like any open_clip model.

Options: ``steps`` (training steps, 800) and ``seed`` (0). Training runs once on the driver and
is cached; text embeddings are cached per actor.
"""

from __future__ import annotations

import numpy as np
import torch

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


class ToyWorldCLIPEmbedder:
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
        import open_clip

        toyclip.register_config()
        path = toyclip.checkpoint_path(training_config(role_spec, spec), progress=lambda _: None)
        self.model, _, _ = open_clip.create_model_and_transforms(toyclip.MODEL_NAME, pretrained=str(path))
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(toyclip.MODEL_NAME)
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self._text_cache: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        cfg = self.model.visual.preprocess_cfg
        x = toyclip.preprocess(images, self.image_size, cfg["mean"], cfg["std"])
        return self.model.encode_image(x, normalize=True).numpy().astype(np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            feats = self.model.encode_text(self.tokenizer(missing), normalize=True).numpy().astype(np.float32)
            self._text_cache.update(zip(missing, feats))
        return np.stack([self._text_cache[t] for t in texts])
