"""Captioner backend ``transformers``: an image-to-text model (BLIP, BLIP-2, GIT...) loaded with
``AutoProcessor`` and ``AutoModelForImageTextToText`` from a hub id or a local folder.

A slice is described by captioning a sample of its images and a sample of the other images, and
ranking the slice's captions by the words that set them apart (a word scores by how much more
often it occurs in the slice's captions than in the reference's), so the caption names what the
slice has in common, not what every image has. Options: ``model`` (required), ``revision``,
``prompt`` (a text prefix for conditional captioning, e.g. "a photo of"), ``max_new_tokens`` (30),
``num_beams`` (3), ``images_per_slice`` (16) and ``top_phrases`` (3).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.weights import check_pretrained_source
from vbugs_ray.spec import SpecError

FIELD = "captioner.options"
STOPWORDS = frozenset("a an the of on in at with and is are there this that it its to photo picture image".split())


def caption_words(caption: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z'-]*", caption.lower()) if w not in STOPWORDS}


def rank_captions(slice_captions: list[str], reference_captions: list[str], top: int) -> list[str]:
    """The slice's distinct captions, best first, scored by the sum over their words of
    (share of slice captions with the word) - (share of reference captions with it)."""
    if not slice_captions:
        return []
    inside = Counter(w for c in slice_captions for w in caption_words(c))
    outside = Counter(w for c in reference_captions for w in caption_words(c))
    n_in, n_out = len(slice_captions), max(len(reference_captions), 1)
    score = {w: inside[w] / n_in - outside[w] / n_out for w in inside}
    distinct = list(dict.fromkeys(c.strip() for c in slice_captions if c.strip()))
    distinct.sort(key=lambda c: -sum(score.get(w, 0.0) for w in caption_words(c)))
    return distinct[:top]


def _positive_int(opts: dict, key: str, default: int) -> int:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{FIELD}.{key}", f"expected a positive integer; got {value!r}")
    return value


class TransformersCaptioner:
    OPTIONS = ("model", "revision", "prompt", "max_new_tokens", "num_beams", "images_per_slice", "top_phrases")
    uses = "images"  # caption.py hands it decoded images, not embeddings

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        opts = role_spec.options
        check_pretrained_source(opts.get("model"), f"{FIELD}.model", "Salesforce/blip-image-captioning-base",
                                "config.json", "transformers model")
        if opts.get("prompt") is not None and not isinstance(opts["prompt"], str):
            raise SpecError(f"{FIELD}.prompt", "expected a string")
        for key, default in (("max_new_tokens", 30), ("num_beams", 3), ("images_per_slice", 16), ("top_phrases", 3)):
            _positive_int(opts, key, default)

    def __init__(self, role_spec, spec, embedder=None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        opts = role_spec.options
        self.device = resolve_device("captioner", role_spec)
        self.dtype = resolve_dtype("captioner", role_spec, self.device)
        kwargs = {"revision": opts["revision"]} if opts.get("revision") else {}
        try:
            self.processor = AutoProcessor.from_pretrained(opts["model"], **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(opts["model"], dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise SpecError(f"{FIELD}.model", f"transformers could not load {opts['model']!r}: "
                            f"{str(exc).strip().splitlines()[0][:200]}") from None
        self.model = model.eval().to(self.device)
        self.prompt = opts.get("prompt")
        self.generate_kwargs = {"max_new_tokens": _positive_int(opts, "max_new_tokens", 30),
                                "num_beams": _positive_int(opts, "num_beams", 3)}
        self.images_per_slice = _positive_int(opts, "images_per_slice", 16)
        self.top = _positive_int(opts, "top_phrases", 3)

    @torch.inference_mode()
    def caption_each(self, images: np.ndarray, batch_size: int = 16) -> list[str]:
        """One caption per image (uint8 (N, H, W, 3))."""
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            chunk = list(images[start:start + batch_size])
            text = [self.prompt] * len(chunk) if self.prompt else None
            inputs = self.processor(images=chunk, text=text, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            ids = self.model.generate(**inputs, **self.generate_kwargs)
            captions.extend(c.strip() for c in self.processor.batch_decode(ids, skip_special_tokens=True))
        return captions

    def caption_images(self, slice_images: np.ndarray, reference_images: np.ndarray) -> list[str]:
        return rank_captions(self.caption_each(slice_images), self.caption_each(reference_images), self.top)
