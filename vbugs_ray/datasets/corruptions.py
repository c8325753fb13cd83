"""Parametric corruptions (after ImageNet-C, Hendrycks & Dietterich 2019) on
torchvision.transforms.v2's functional ops (blur, contrast, rotation, erasing) and Pillow's JPEG,
five severities each, stronger at each level.

An image's corruption depends on (image, corruption, severity, seed) only: whatever is random
(the noise, the rotation's direction, the occluder's place) comes from a generator seeded with
the row's seed, so a re-run and every node draw the same pixels. Sizes that scale with the image
(blur sigma, occluder side) are fractions of its side, so a level means the same at 32 and 224 px.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

SEVERITIES = ("1", "2", "3", "4", "5")

# per corruption, its parameter at severities 1..5
LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (0.02, 0.04, 0.06, 0.09, 0.13),   # sigma as a fraction of the side
    "gaussian_noise": (0.04, 0.08, 0.13, 0.19, 0.27),  # noise sigma on [0, 1] pixels
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),           # added to every pixel (dark backgrounds too)
    "contrast": (0.65, 0.5, 0.35, 0.22, 0.12),         # contrast factor (1: unchanged)
    "rotation": (8.0, 16.0, 26.0, 38.0, 55.0),          # degrees, direction drawn per row
    "jpeg": (50, 30, 18, 10, 5),                        # JPEG quality
    "occlusion": (0.2, 0.3, 0.4, 0.5, 0.6),             # occluder side as a fraction of the image side
}
NAMES = tuple(LEVELS)


def _generator(seed: int, name: str, severity: int) -> torch.Generator:
    mix = (int(seed) * 1_000_003 + NAMES.index(name) * 97 + severity) % (2**63 - 1)
    return torch.Generator().manual_seed(mix)


def _blur(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    sigma = max(level * x.shape[-1], 0.3)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _noise(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    return (x + level * torch.randn(x.shape, generator=g)).clamp_(0, 1)


def _brightness(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    """Added, as ImageNet-C adds to HSV value: F.adjust_brightness multiplies, which leaves a black
    background black and saturates a bright object by severity 4, so the levels would stop growing."""
    return (x + level).clamp_(0, 1)


def _contrast(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(x, level)


def _rotation(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    sign = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
    return F.rotate(x, sign * level, interpolation=F.InterpolationMode.BILINEAR)


def _jpeg(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    """Pillow's JPEG round trip: torchvision's (F.jpeg) goes through torchvision.io, deprecated
    since 0.29 for torchcodec."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=int(level))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return torch.from_numpy(np.array(decoded.convert("RGB"), np.float32)).permute(2, 0, 1) / 255


def _occlusion(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    side_h, side_w = max(1, round(level * h)), max(1, round(level * w))
    top = int(torch.randint(0, h - side_h + 1, (1,), generator=g))
    left = int(torch.randint(0, w - side_w + 1, (1,), generator=g))
    return F.erase(x, top, left, side_h, side_w, v=torch.tensor(0.5))


_OPS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_blur": _blur, "gaussian_noise": _noise, "brightness": _brightness, "contrast": _contrast,
    "rotation": _rotation, "jpeg": _jpeg, "occlusion": _occlusion,
}


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One (H, W, 3) uint8 image with ``name`` at ``severity`` (1..5) applied."""
    if name not in _OPS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(NAMES)}")
    if not 1 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be 1..{len(SEVERITIES)}; got {severity}")
    x = torch.from_numpy(np.array(image, np.float32, copy=True)).permute(2, 0, 1).div_(255.0)
    y = _OPS[name](x, LEVELS[name][severity - 1], _generator(seed, name, severity))
    return y.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
