"""What the open_clip and toyworld_clip embedders share: an open_clip model loaded with
``open_clip.create_model_and_transforms(name, pretrained=...)``, its preprocessing as batched
tensor ops, and normalised image and text embeddings (text cached per actor: the filter and the
captioner ask for the same prompts again and again)."""

from __future__ import annotations

import numpy as np
import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.preprocess import EvalTransform


class OpenCLIPModel:
    def _load(self, role: str, role_spec, name: str, pretrained: str | None) -> None:
        import open_clip

        self.device = resolve_device(role, role_spec)
        self.dtype = resolve_dtype(role, role_spec, self.device)
        try:
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        except (RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise SpecError(f"{role}.options.pretrained", f"open_clip could not load {name} / {pretrained}: {reason}") from None
        self.model = model.eval().to(self.device, self.dtype)
        self.tokenizer = open_clip.get_tokenizer(name)
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
        resize = size if cfg.get("resize_mode") == "squash" else min(size)
        self.transform = EvalTransform(size, resize, cfg.get("interpolation", "bicubic"), cfg["mean"], cfg["std"])
        self._text_cache: dict[str, np.ndarray] = {}

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        return self.transform(images, self.device, self.dtype)

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32, unit length."""
        return self.model.encode_image(self.preprocess(images), normalize=True).float().cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts) -> np.ndarray:
        """(N, D) float32, unit length; each distinct text is encoded once per actor."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            feats = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
            self._text_cache.update(zip(missing, feats))
        return np.stack([self._text_cache[t] for t in texts])
