"""Evaluation preprocessing as batched tensor ops on the model's device.

``EvalTransform`` is timm's / torchvision's / open_clip's evaluation preprocessing (resize the
shorter side, centre crop, scale, normalise), applied to a whole uint8 batch at once: their own
transforms take one PIL image at a time on the CPU, which starves a GPU model. A test checks it
against timm's ``create_transform`` on the same images.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from vbugs_ray.errors import SpecError, quote

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PREPROCESS_KEYS = ("size", "resize", "crop_pct", "interpolation", "mean", "std")


class EvalTransform:
    def __init__(self, crop_size: Sequence[int], resize_size: int | Sequence[int], interpolation: str,
                 mean: Sequence[float], std: Sequence[float]):
        from torchvision.transforms import InterpolationMode

        self.crop_size = [int(v) for v in crop_size]
        self.resize_size = [int(resize_size)] if isinstance(resize_size, (int, float)) else [int(v) for v in resize_size]
        self.interpolation = InterpolationMode(interpolation)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        x = F.resize(x, self.resize_size, interpolation=self.interpolation, antialias=True)
        x = F.center_crop(x, self.crop_size).float().div_(255)
        x = (x - self.mean.to(device)) / self.std.to(device)
        return x.to(dtype)

    @classmethod
    def from_timm_config(cls, cfg: dict) -> "EvalTransform":
        """From ``timm.data.resolve_data_config``: the scale size is input / crop_pct, shorter side
        when square (as timm's ``transforms_imagenet_eval``)."""
        _, height, width = cfg["input_size"]
        crop_pct = cfg.get("crop_pct") or 0.875
        scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        resize = scale[0] if height == width else scale
        interpolation = cfg.get("interpolation", "bilinear")
        return cls((height, width), resize, interpolation if interpolation in INTERPOLATIONS else "bilinear",
                   cfg["mean"], cfg["std"])


def preprocess_settings(raw: Any, field: str) -> dict:
    """A spec's ``preprocess`` mapping, checked and completed: size (int or [h, w]), resize
    (shorter side; default size / crop_pct), crop_pct (0.875), interpolation, mean and std
    (ImageNet's by default)."""
    if not isinstance(raw, dict):
        raise SpecError(field, f"expected a mapping with keys {', '.join(PREPROCESS_KEYS)}")
    for key in raw:
        if key not in PREPROCESS_KEYS:
            raise SpecError(f"{field}.{key}", f"unknown key; allowed: {', '.join(PREPROCESS_KEYS)}")
    size = raw.get("size")
    sizes = size if isinstance(size, list) else [size, size]
    if len(sizes) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise SpecError(f"{field}.size", f"expected a positive integer or [height, width]; got {quote(size)}")
    crop_pct = raw.get("crop_pct", 0.875)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise SpecError(f"{field}.crop_pct", f"expected a fraction in (0, 1]; got {quote(crop_pct)}")
    resize = raw.get("resize", math.floor(min(sizes) / crop_pct))
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < min(sizes):
        raise SpecError(f"{field}.resize", f"expected an integer >= the crop size; got {quote(resize)}")
    interpolation = raw.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise SpecError(f"{field}.interpolation", f"expected one of {', '.join(INTERPOLATIONS)}; got {quote(interpolation)}")
    out = {"size": sizes, "resize": resize, "interpolation": interpolation}
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        value = raw.get(key, list(default))
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise SpecError(f"{field}.{key}", f"expected three numbers (one per RGB channel); got {quote(value)}")
        out[key] = value
    return out


def transform_from_settings(settings: dict) -> EvalTransform:
    """The EvalTransform of a checked ``preprocess`` mapping (``preprocess_settings``)."""
    return EvalTransform(settings["size"], settings["resize"], settings["interpolation"], settings["mean"],
                         settings["std"])
