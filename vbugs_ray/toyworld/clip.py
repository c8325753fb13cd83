"""The toy-world CLIP: an open_clip model (a small config registered with add_model_config)
trained contrastively on renderer images and captions in the renderer's own words.

The checkpoint is a plain state dict that ``open_clip.create_model_and_transforms(MODEL_NAME,
pretrained=path)`` loads, the same call that loads a real open_clip checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from vbugs_ray.cache import trained
from vbugs_ray.toyworld import renderer

MODEL_NAME = "vbugs-toyclip"
_CONFIG_DIR = Path(__file__).resolve().parent


def register_config() -> None:
    """Make MODEL_NAME known to open_clip, and its vision trunk known to timm (idempotent).

    The vision tower is the toy CNN registered as a timm model, wrapped by open_clip's own
    TimmModel adapter: a small conv net learns shapes within the training budget, where
    open_clip's ModifiedResNet at this size did not (about 70% zero-shot class accuracy).
    """
    import open_clip
    import timm

    if not timm.is_model(TIMM_TRUNK):
        timm.models.register_model(_toycnn_trunk)
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR / f"{MODEL_NAME}.json")


TIMM_TRUNK = "vbugs_toycnn"


def _toycnn_trunk(pretrained: bool = False, num_classes: int = 64, **kwargs):
    """timm entry point: the toy CNN with its head as the embedding projection."""
    from vbugs_ray.toyworld.classifier import ToyCNN

    if pretrained:
        raise ValueError(f"{TIMM_TRUNK} has no pretrained weights; load a checkpoint instead")
    return ToyCNN(num_classes=num_classes, standardize=True, image_stats=True)


_toycnn_trunk.__name__ = TIMM_TRUNK


def random_caption(props: Mapping[str, str], rng: np.random.Generator, always: str = "class",
                   keep: float = 0.45) -> str:
    """A caption naming ``always`` and a random subset of the other properties."""
    return renderer.describe({k: v for k, v in props.items() if k == always or rng.random() < keep})


def ensemble_prompts(prop: str, value: str, n: int = 24, seed: int = 0) -> list[str]:
    """Captions that name ``prop=value`` among random other properties (a prompt ensemble)."""
    rng = np.random.default_rng([seed, 4242])
    prompts = [renderer.describe({prop: value})]
    for props in renderer.sample_properties(n - 1, rng):
        props[prop] = value
        chosen = {k: v for k, v in props.items() if k == prop or rng.random() < 0.4}
        prompts.append(renderer.describe(chosen))
    return prompts


def preprocess(images: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised (N, 3, S, S), area-resized like a thumbnail."""
    x = torch.from_numpy(np.array(images, dtype=np.float32, copy=True)).permute(0, 3, 1, 2).div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area")
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def training_config(steps: int, seed: int, resolution: int) -> dict:
    return {"model": MODEL_NAME, "tower": "timm:vbugs_toycnn", "caption_keep": 0.45, "steps": steps, "batch_size": 128, "lr": 2e-3, "pool": 16384,
            "seed": seed, "resolution": resolution, "renderer": renderer.RENDERER_VERSION}


def train(config: dict, progress: Callable[[str], None] = print) -> dict:
    """Contrastive training on a pool of renders with freshly drawn captions each step."""
    import open_clip
    from open_clip.loss import ClipLoss

    register_config()
    torch.manual_seed(config["seed"])
    model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, output_dict=True)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    rng = np.random.default_rng([config["seed"], 2024])
    t0 = time.time()
    props = renderer.sample_properties(config["pool"], rng)
    images = renderer.render(props, rng.integers(0, 2**31 - 1, len(props)), config["resolution"])
    pool = preprocess(images, size, model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"])
    progress(f"toy CLIP: rendered {len(props)} training images in {time.time() - t0:.1f}s")

    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"], total_steps=config["steps"], pct_start=0.1)
    model.train()
    bs = config["batch_size"]
    for step in range(config["steps"]):
        idx = rng.integers(0, len(props), bs)
        texts = tokenizer([random_caption(props[i], rng, keep=config["caption_keep"]) for i in idx])
        out = model(pool[torch.from_numpy(idx)], texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, config["steps"] // 10) == 0:
            progress(f"toy CLIP: step {step + 1}/{config['steps']} loss {float(loss.detach()):.3f} "
                     f"({time.time() - t0:.0f}s)")
    model.eval()
    return model.state_dict()


def checkpoint_path(config: dict, progress: Callable[[str], None] = print) -> Path:
    """Path of the cached checkpoint for ``config``, training it first on a cache miss."""
    return trained("toy-clip", config, lambda: train(config, progress), progress)
