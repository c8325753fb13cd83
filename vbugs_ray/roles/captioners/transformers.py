"""Captioner backend ``transformers``: an image-to-text model (BLIP, BLIP-2, GIT...) loaded with
``AutoProcessor`` and ``AutoModelForImageTextToText`` from a hub id or a local folder.

A slice is described by captioning a sample of its images and a sample of the other images, and
ranking the slice's captions by the words that set them apart (a word scores by how much more
often it occurs in the slice's captions than in the reference's), so the caption names what the
slice has in common, not what every image has. Options: ``model`` (required), ``revision``,
``prompt`` (a text prefix for conditional captioning, e.g. "a photo of"), ``max_new_tokens`` (30),
``num_beams`` (3), ``images_per_slice`` (16) and ``top_phrases`` (3); the role's ``batch_size``
is the number of images per captioning call.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.weights import check_pretrained_source

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


class TransformersCaptioner:
    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="a hub id (Salesforce/blip-image-captioning-base) or a local folder")
        revision: str | None = option(None, kind=str)
        prompt: str | None = option(None, kind=str)
        max_new_tokens: int = option(30, kind=int, low=1)
        num_beams: int = option(3, kind=int, low=1)
        images_per_slice: int = option(16, kind=int, low=1)
        top_phrases: int = option(3, kind=int, low=1)

    @classmethod
    def check(cls, options, spec) -> None:
        check_pretrained_source(options.model, f"{FIELD}.model", "Salesforce/blip-image-captioning-base",
                                "config.json", "transformers model")

    @classmethod
    def sample_size_for(cls, options) -> int:
        return options.images_per_slice

    def __init__(self, options, role_spec, spec, embedder=None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = resolve_device("captioner", role_spec)
        self.dtype = resolve_dtype("captioner", role_spec, self.device)
        kwargs = {"revision": options.revision} if options.revision else {}
        try:
            self.processor = AutoProcessor.from_pretrained(options.model, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(options.model, dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise SpecError(f"{FIELD}.model", f"transformers could not load {quote(options.model)}: "
                            f"{str(exc).strip().splitlines()[0][:200]}") from None
        self.model = model.eval().to(self.device)
        self.prompt = options.prompt
        self.generate_kwargs = {"max_new_tokens": options.max_new_tokens, "num_beams": options.num_beams}
        self.sample_size = self.sample_size_for(options)
        self.batch_size = role_spec.batch_size
        self.top = options.top_phrases

    @torch.inference_mode()
    def caption_each(self, images: np.ndarray) -> list[str]:
        """One caption per image (uint8 (N, H, W, 3)), ``batch_size`` images per call."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            text = [self.prompt] * len(chunk) if self.prompt else None
            inputs = self.processor(images=chunk, text=text, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            ids = self.model.generate(**inputs, **self.generate_kwargs)
            captions.extend(c.strip() for c in self.processor.batch_decode(ids, skip_special_tokens=True))
        return captions

    def caption(self, inside, reference) -> list[str]:
        return rank_captions(self.caption_each(inside.images()), self.caption_each(reference.images()), self.top)
