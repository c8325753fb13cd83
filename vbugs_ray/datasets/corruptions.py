"""Parametric corruptions (after ImageNet-C, Hendrycks & Dietterich 2019) on
torchvision.transforms.v2's functional ops, five severities each, stronger at each level.

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
    "brightness": (1.25, 1.5, 1.8, 2.2, 2.7),          # multiplicative brightness
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
    return F.adjust_brightness(x, level)


def _contrast(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(x, level)


def _rotation(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    sign = 1.0 if torch.rand(1, generator=g).item() < 0.5 else -1.0
    return F.rotate(x, sign * level, interpolation=F.InterpolationMode.BILINEAR)


def _jpeg(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    as_bytes = (x * 255).round().to(torch.uint8)
    return F.jpeg(as_bytes, quality=int(level)).float() / 255


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
