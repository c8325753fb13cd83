"""Embedder backend ``open_clip``: ``open_clip.create_model_and_transforms(model, pretrained=...)``,
normalised image and text embeddings in one joint space (the filter, the captioner and the
report all compare images with words through it).

Options: ``model`` (required; open_clip.list_models() or hf-hub:org/repo), ``pretrained`` (a tag
of that model, e.g. laion2b_s34b_b79k, or a local checkpoint file) and ``config`` (a model config
JSON to register first, for architectures open_clip does not ship). Text embeddings are cached per
actor: the filter and the captioner ask for the same prompts again and again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.spec import SpecError

FIELD = "embedder.options"


def register_config(path) -> str:
    """Register a model config JSON with open_clip; returns the model name it defines (its stem)."""
    import open_clip

    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise SpecError(f"{FIELD}.config", f"no model config file at {file}")
    try:
        json.loads(file.read_text())
    except ValueError:
        raise SpecError(f"{FIELD}.config", f"{file} is not JSON") from None
    open_clip.add_model_config(file)
    return file.stem


def check_model(options: dict) -> None:
    import open_clip

    name, pretrained = options.get("model"), options.get("pretrained")
    if options.get("config"):
        register_config(options["config"])
    if not isinstance(name, str) or not name:
        raise SpecError(f"{FIELD}.model", "is required: an open_clip model name (open_clip.list_models())")
    if not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise SpecError(f"{FIELD}.model", f"unknown open_clip model {name!r}; see open_clip.list_models(), e.g. ViT-B-32")
    if pretrained is None or name.startswith("hf-hub:"):
        return
    if not isinstance(pretrained, str):
        raise SpecError(f"{FIELD}.pretrained", f"expected a pretrained tag or a checkpoint path; got {pretrained!r}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    looks_like_path = "/" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if pretrained not in tags and not looks_like_path:
        raise SpecError(f"{FIELD}.pretrained", f"{name} has no pretrained tag {pretrained!r}; "
                        f"tags: {', '.join(tags) or 'none'}; or give a checkpoint path")
    if looks_like_path and not Path(pretrained).expanduser().is_file():
        raise SpecError(f"{FIELD}.pretrained", f"no checkpoint file at {pretrained}")


class OpenCLIPEmbedder:
    OPTIONS = ("model", "pretrained", "config")

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        check_model(role_spec.options)

    def __init__(self, role_spec, spec):
        opts = role_spec.options
        if opts.get("config"):
            register_config(opts["config"])
        self._load("embedder", role_spec, opts["model"], opts.get("pretrained"))

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
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit length; each distinct text is encoded once per actor."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            feats = self.model.encode_text(tokens, normalize=True).float().cpu().numpy()
            self._text_cache.update(zip(missing, feats))
        return np.stack([self._text_cache[t] for t in texts])
