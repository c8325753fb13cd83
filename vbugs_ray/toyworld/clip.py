"""The toy-world CLIP: an open_clip model (a small config registered with add_model_config)
trained contrastively on renderer images and captions in the renderer's own words, in batches of
near-identical scenes that differ in one property (hard negatives: see ``train``).

The checkpoint is a plain state dict that ``open_clip.create_model_and_transforms(MODEL_NAME,
pretrained=path)`` loads, the same call that loads a real open_clip checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
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
    """The toy CLIP's training run (its cache key). ``groups``: batches are groups of ``size``
    near-identical scenes that differ in one property, drawn by ``weights``: clutter and size,
    which change few pixels, get most groups (see ``train``). ``pool``: images rendered once and
    reused; counting clutter discs overfits a small pool (16k: the trunk tops out near 88%).
    About 3 minutes on 2 CPU cores (40 s of it rendering), for >= 85% zero-shot on every property."""
    return {"model": MODEL_NAME, "tower": "timm:vbugs_toycnn", "caption_keep": 0.45, "steps": steps, "batch_size": 128, "lr": 2e-3,
            "pool": 98304, "seed": seed, "resolution": resolution, "renderer": renderer.RENDERER_VERSION,
            "groups": {"size": 3, "weights": {"class": 0.5, "background": 0.5, "lighting": 0.5, "colour": 0.5, "size": 3, "clutter": 6}},
            "optimizer": "adamw-fused"}


def grouped_pool(n: int, group: int, weights: Mapping[str, float], rng: np.random.Generator
                 ) -> tuple[list[dict[str, str]], np.ndarray, list[str]]:
    """About n training images in groups of ``group``: the images of a group share their seed and
    every property but one (the group's *varied* property, drawn by ``weights``), so they are the
    same scene but for that property (the same layout with more or fewer clutter discs, the same
    shape larger or smaller, ...). Returns properties, seeds and each image's varied property."""
    names = list(weights)
    p = np.array([weights[k] for k in names], np.float64)
    p /= p.sum()
    props: list[dict[str, str]] = []
    seeds: list[int] = []
    varied: list[str] = []
    for base in renderer.sample_properties(n // group, rng):
        prop = names[int(rng.choice(len(names), p=p))]
        values = list(renderer.VOCABULARY[prop])
        seed = int(rng.integers(0, 2**31 - 1))
        for j in rng.choice(len(values), size=group, replace=False):
            props.append({**base, prop: values[int(j)]})
            seeds.append(seed)
            varied.append(prop)
    return props, np.array(seeds), varied


def train(config: dict, progress: Callable[[str], None] = print) -> dict:
    """Contrastive training on a pool of renders with freshly drawn captions each step.

    Batches are made of whole groups (``grouped_pool``): hard negatives. The captions of a group
    name the class, the group's varied property and the same random subset of the others, so
    they differ only where the images do; without such near-twins in a batch, properties that
    change few pixels (clutter, size) barely move a loss that class and colour already settle.
    """
    import open_clip

    register_config()
    torch.manual_seed(config["seed"])
    with _from_scratch_is_intended():
        model, _, _ = open_clip.create_model_and_transforms(MODEL_NAME, output_dict=True)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    rng = np.random.default_rng([config["seed"], 2024])
    t0 = time.time()
    group = config["groups"]["size"]
    props, seeds, varied = grouped_pool(config["pool"], group, config["groups"]["weights"], rng)
    res = config["resolution"]
    images = np.empty((len(props), res, res, 3), np.uint8)  # kept as uint8, preprocessed per batch
    for i in range(0, len(props), 8192):  # in slices: no second copy of the whole pool
        images[i:i + 8192] = renderer.render(props[i:i + 8192], seeds[i:i + 8192], res)
    progress(f"toy CLIP: rendered {len(props)} training images in {time.time() - t0:.1f}s")

    per_batch = config["batch_size"] // group  # whole groups: 42 of 3 for batch_size 128
    n_groups = len(props) // group
    keep = config["caption_keep"]

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        starts = rng.choice(n_groups, per_batch, replace=False) * group
        idx = (starts[:, None] + np.arange(group)[None]).ravel()
        captions = []
        for start in starts:
            named = {p for p in renderer.PROPERTIES if p in ("class", varied[start]) or rng.random() < keep}
            captions += [renderer.describe({k: v for k, v in props[i].items() if k in named})
                         for i in range(start, start + group)]
        return preprocess(images[idx], size, mean, std), tokenizer(captions)

    fit_contrastive(model, batch, config["steps"], config["lr"], lambda line: progress(f"toy CLIP: {line}"), t0,
                    every=10)
    return model.state_dict()


def fit_contrastive(model, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                    progress: Callable[[str], None], t0: float, every: int = 10) -> None:
    """open_clip's contrastive loss over ``steps`` batches of (images, tokens) from ``batch()``
    (AdamW, one-cycle learning rates), a progress line ``every`` tenth; leaves the model in eval mode."""
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        out = model(*batch())
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // every) == 0:
            progress(f"step {step + 1}/{steps} loss {float(loss.detach()):.3f} ({time.time() - t0:.0f}s)")
    model.eval()


def checkpoint_path(config: dict, progress: Callable[[str], None] = print) -> Path:
    """Path of the cached checkpoint for ``config``, training it first on a cache miss."""
    return trained("toy-clip", config, lambda: train(config, progress), progress)


class _DropScratchNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"No pretrained weights loaded for model '{MODEL_NAME}'")


@contextlib.contextmanager
def _from_scratch_is_intended():
    """open_clip warns (on the root logger) that a model built without weights starts random:
    training the toy CLIP from scratch is the point, so that one notice is dropped while it is built."""
    notice = _DropScratchNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)
