"""Decoding and resizing: whatever a source holds (encoded bytes, a path, a grey array) becomes
one uint8 RGB image of the source's size, or a one-line reason it could not be read."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from vbugs_ray.errors import cut, one_line

UNREADABLE = "unreadable_image"  # filter_reason of a row whose image could not be decoded


def to_rgb(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: grey and palette images as RGB, resized bilinearly (upsampling an
    8x8 digit smooths it, as the classifier trained on the same resize sees it)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8)


def decode(data: bytes, size: int, name: str) -> np.ndarray | str:
    """Encoded image bytes -> an RGB array, or the reason (one line) they are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL raises all of these for data that is not a (sane) image
        return cut(one_line(f"{name}: {type(exc).__name__}: {exc}"), 200)
