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
from dataclasses import dataclass
from pathlib import Path

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.embedders._open_clip_model import OpenCLIPModel

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


def check_model(options) -> None:
    import open_clip

    name, pretrained = options.model, options.pretrained
    if options.config:
        register_config(options.config)
    if not name.startswith("hf-hub:") and name not in open_clip.list_models():
        raise SpecError(f"{FIELD}.model", f"unknown open_clip model {quote(name)}; see open_clip.list_models(), e.g. ViT-B-32")
    if pretrained is None or name.startswith("hf-hub:"):
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    looks_like_path = "/" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if pretrained not in tags and not looks_like_path:
        raise SpecError(f"{FIELD}.pretrained", f"{name} has no pretrained tag {quote(pretrained)}; "
                        f"tags: {', '.join(tags) or 'none'}; or give a checkpoint path")
    if looks_like_path and not Path(pretrained).expanduser().is_file():
        raise SpecError(f"{FIELD}.pretrained", f"no checkpoint file at {pretrained}")


class OpenCLIPEmbedder(OpenCLIPModel):
    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="an open_clip model name (open_clip.list_models())")
        pretrained: str | None = option(None, kind=str, doc="a pretrained tag or a checkpoint path")
        config: str | None = option(None, kind=str, doc="a model config JSON")

    @classmethod
    def check(cls, options, spec) -> None:
        check_model(options)

    def __init__(self, options, role_spec, spec):
        if options.config:
            register_config(options.config)
        self._load("embedder", role_spec, options.model, options.pretrained)
