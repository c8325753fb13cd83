"""The toy-world classifier: a small CNN trained on a *biased* sample of the world.

Bugs are planted through the training sample only (the architecture and the loss are plain), so
what the audit must find is what a real model picks up from skewed data:

- under-representation ``{where: {class: star, lighting: night}, keep: 0.0}`` keeps that fraction
  of the training images that match ``where``;
- spurious correlation ``{where: {class: square}, spurious: {background: grass}, strength: 0.97}``
  makes that share of the matching images show the spurious value (the rest show other values);
- mislabelled subgroup ``{where: {class: star, background: snow}, relabel: circle, share: 0.9}``
  gives that share of the matching images the label ``relabel`` (the image still shows a star).

``where`` may name any renderer property (``renderer.PROPERTIES``), not only the audit's axes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vbugs_ray.cache import trained
from vbugs_ray.toyworld import renderer


@dataclass(frozen=True)
class PlantedBug:
    """One planted bug: ``where`` selects training images; keep, spurious+strength or
    relabel+share skews them."""

    where: dict
    keep: float | None = None
    spurious: dict | None = None
    strength: float | None = None
    relabel: str | None = None
    share: float | None = None

    @property
    def kind(self) -> str:
        if self.keep is not None:
            return "under_representation"
        if self.relabel is not None:
            return "mislabelled_subgroup"
        return "spurious_correlation"

    def to_dict(self) -> dict:
        # the two older kinds keep their exact dicts: a cached classifier keeps its cache key
        out = {"where": dict(self.where)}
        if self.keep is not None:
            out["keep"] = self.keep
        elif self.relabel is not None:
            out.update(relabel=self.relabel, share=self.share)
        else:
            out.update(spurious=dict(self.spurious), strength=self.strength)
        return out


def _matches(props: Mapping[str, str], where: Mapping[str, str]) -> bool:
    return all(props.get(k) == v for k, v in where.items())


def render_properties(sample: Mapping[str, str]) -> dict[str, str]:
    """What the renderer draws for one ``biased_sample`` entry (its properties, not its label)."""
    return {k: v for k, v in sample.items() if k != "label"}


def biased_sample(n: int, classes: Sequence[str], bugs: Sequence[PlantedBug], seed: int) -> list[dict[str, str]]:
    """n training entries: uniform over the world restricted to ``classes``, then skewed.

    Each entry holds the renderer properties of one image (``class`` is the shape it shows) and
    ``label``, the class it is trained as: ``class`` unless a mislabelled-subgroup bug relabelled
    it (the first such bug that matches and fires). ``render_properties`` drops the label.
    """
    rng = np.random.default_rng([seed, 31337])
    relabels = [b for b in bugs if b.relabel is not None]
    out: list[dict[str, str]] = []
    while len(out) < n:
        for props in renderer.sample_properties(max(1024, n), rng, fixed={"class": classes}):
            for bug in bugs:
                if bug.spurious and _matches(props, bug.where):
                    (axis, value), = bug.spurious.items()
                    if rng.random() < bug.strength:
                        props[axis] = value
                    elif props[axis] == value:
                        others = [v for v in renderer.VOCABULARY[axis] if v != value]
                        props[axis] = others[int(rng.integers(len(others)))]
            if any(b.keep is not None and _matches(props, b.where) and rng.random() >= b.keep for b in bugs):
                continue
            # drawn after the older kinds' draws, and only for mislabel bugs: the older kinds'
            # samples stay what they were
            label = props["class"]
            for bug in relabels:
                if _matches(props, bug.where) and rng.random() < bug.share:
                    label = bug.relabel
                    break
            props["label"] = label
            out.append(props)
            if len(out) == n:
                break
    return out


class ToyCNN(nn.Module):
    """Four conv blocks, global average+max pooling, a linear head. Input: floats in [0, 1], NCHW.

    ``standardize``: each image is standardised per channel first (the toy CLIP's trunk does, so
    its shape features ignore lighting); ``image_stats`` then hands the head the per-channel mean
    and spread that standardising removed, which the CLIP needs to tell lighting and background.
    The audited toy classifier sees raw pixels (fixed scaling): like a real model, it can then
    lean on colour, lighting and background, which is what lets planted bugs take.
    """

    def __init__(self, num_classes: int, width: int = 32, standardize: bool = False, image_stats: bool = False):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.standardize, self.image_stats = standardize, image_stats
        self.features = nn.Sequential(
            nn.AvgPool2d(2), block(3, width), nn.MaxPool2d(2),
            block(width, width * 2), nn.MaxPool2d(2), block(width * 2, width * 4), nn.MaxPool2d(2),
            block(width * 4, width * 4),
        )
        self.head = nn.Linear(width * 8 + (6 if image_stats else 0), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True) + 0.05
        f = self.features((x - mean) / std if self.standardize else (x - 0.5) / 0.25)
        pooled = [f.mean(dim=(2, 3)), f.amax(dim=(2, 3))]
        if self.image_stats:
            pooled += [mean.flatten(1) * 4, std.flatten(1) * 4]
        return self.head(torch.cat(pooled, dim=1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] (copies: batches may be read-only)."""
    return torch.from_numpy(np.array(images, dtype=np.float32, copy=True)).permute(0, 3, 1, 2).div_(255.0)


def training_config(classes: Sequence[str], bugs: Sequence[PlantedBug], train_images: int, epochs: int,
                    seed: int, resolution: int) -> dict:
    config = {"classes": list(classes), "bugs": [b.to_dict() for b in bugs], "train_images": train_images,
              "epochs": epochs, "seed": seed, "resolution": resolution, "renderer": renderer.RENDERER_VERSION,
              "model": "ToyCNN-v2-raw"}
    return json.loads(json.dumps(config))  # plain types only: the checkpoint loads with weights_only


def train(config: dict, progress: Callable[[str], None] = print) -> dict:
    """Train a ToyCNN on the biased sample described by ``config``; returns a checkpoint dict."""
    torch.manual_seed(config["seed"])
    bugs = [PlantedBug(**b) for b in config["bugs"]]
    props = biased_sample(config["train_images"], config["classes"], bugs, config["seed"])
    seeds = np.random.default_rng([config["seed"], 99]).integers(0, 2**31 - 1, len(props))
    t0 = time.time()
    images = renderer.render([render_properties(p) for p in props], seeds, config["resolution"])
    labels = torch.tensor([config["classes"].index(p["label"]) for p in props])
    x = to_tensor(images)
    progress(f"toy classifier: rendered {len(props)} biased training images in {time.time() - t0:.1f}s")

    model = ToyCNN(len(config["classes"]))
    fit(model, x, labels, config["epochs"], config["seed"], lambda line: progress(f"toy classifier: {line}"), t0)
    return {"config": config, "state_dict": model.state_dict()}


def fit(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
        progress: Callable[[str], None], t0: float) -> None:
    """Cross-entropy training in shuffled batches of 128 (AdamW, one-cycle learning rates), a
    progress line per epoch; leaves the model in eval mode."""
    steps = epochs * ((len(x) + 127) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
        progress(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.3f} train acc {correct / len(x):.3f} "
                 f"({time.time() - t0:.0f}s)")
    model.eval()


def weights_path(config: dict, progress: Callable[[str], None] = print):
    """The cached weights file for ``config``, training it first if the cache has none."""
    return trained("toy-classifier", config, lambda: train(config, progress), progress)


def load_or_train(config: dict, progress: Callable[[str], None] = print) -> ToyCNN:
    """The cached classifier for ``config``, training it first if the cache has none."""
    path = weights_path(config, progress)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = ToyCNN(len(checkpoint["config"]["classes"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
