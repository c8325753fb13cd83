"""The examples' models, trained on a dataset source's training images and cached like the toy
world's (vbugs_ray.cache): a small CNN classifier on the clean training split (``data_cnn``) and
a small CLIP (open_clip's code, the toy CLIP's config) on training images in the spec's words
(``data_clip``). Both run once on the driver; actors load the cached weights."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from vbugs_ray.cache import trained
from vbugs_ray.toyworld.classifier import ToyCNN, to_tensor

Progress = Callable[[str], None]


def classifier_config(source, classes, epochs: int, seed: int, width: int) -> dict:
    return {"model": "ToyCNN-data-v1", "source": {"format": source.format, "path": source.path, "size": source.size,
                                                  "split_column": source.split_column},
            "classes": list(classes), "epochs": epochs, "seed": seed, "width": width}


def train_classifier(config: dict, source, progress: Progress) -> dict:
    """A ToyCNN on the clean training split, raw pixels in (like a model that never saw a
    corruption), batches of 128 with AdamW and one-cycle learning rates."""
    from vbugs_ray.datasets.sources import labelled_images

    torch.manual_seed(config["seed"])
    images, labels = labelled_images(source, "train", tuple(config["classes"]))
    x, y = to_tensor(images), torch.from_numpy(labels)
    model = ToyCNN(len(config["classes"]), width=config["width"])
    steps = config["epochs"] * ((len(x) + 127) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(config["seed"])
    t0 = time.time()
    model.train()
    for epoch in range(config["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        correct = 0
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y[idx]).sum())
        progress(f"data classifier: epoch {epoch + 1}/{config['epochs']} train acc {correct / len(x):.3f} "
                 f"({time.time() - t0:.0f}s)")
    model.eval()
    return {"config": config, "state_dict": model.state_dict()}


def classifier_path(config: dict, source, progress: Progress) -> str:
    return trained("data-classifier", config, lambda: train_classifier(config, source, progress), progress)


def load_classifier(path) -> ToyCNN:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    model = ToyCNN(len(config["classes"]), width=config["width"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def train_clip(config: dict, pool: Callable[[], tuple[np.ndarray, list[str], np.ndarray]], progress: Progress) -> dict:
    """Contrastive training of the toy CLIP's open_clip config on (image, caption) pairs from
    ``pool()``: images, captions and a group per image. A batch is made of whole groups (the same
    picture under several corruptions: hard negatives, so the text side learns the corruptions
    and not only the classes)."""
    import open_clip
    from open_clip.loss import ClipLoss

    from vbugs_ray.toyworld import clip as toyclip

    toyclip.register_config()
    torch.manual_seed(config["seed"])
    with toyclip._from_scratch_is_intended():
        model, _, _ = open_clip.create_model_and_transforms(toyclip.MODEL_NAME, output_dict=True)
    tokenizer = open_clip.get_tokenizer(toyclip.MODEL_NAME)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    t0 = time.time()
    images, captions, groups = pool()
    progress(f"data CLIP: {len(images)} training pairs in {time.time() - t0:.1f}s")
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    per_batch = max(1, config["batch_size"] // int(np.max(ends - starts)))
    rng = np.random.default_rng([config["seed"], 31])
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"], total_steps=config["steps"], pct_start=0.1)
    model.train()
    for step in range(config["steps"]):
        chosen = rng.choice(len(starts), min(per_batch, len(starts)), replace=False)
        idx = np.concatenate([np.arange(starts[g], ends[g]) for g in chosen])
        out = model(toyclip.preprocess(images[idx], size, mean, std), tokenizer([captions[i] for i in idx]))
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, config["steps"] // 5) == 0:
            progress(f"data CLIP: step {step + 1}/{config['steps']} loss {float(loss.detach()):.3f} "
                     f"({time.time() - t0:.0f}s)")
    model.eval()
    return model.state_dict()
