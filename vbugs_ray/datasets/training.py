"""The examples' models, trained on a dataset source's training images and cached like the toy
world's (vbugs_ray.cache): a small CNN classifier on the clean training split (``data_cnn``) and
a small CLIP (open_clip's code, the toy CLIP's config) on training images in the spec's words
(``data_clip``). Both run once on the driver; actors load the cached weights."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from vbugs_ray.cache import trained
from vbugs_ray.toyworld.classifier import ToyCNN, fit, to_tensor

Progress = Callable[[str], None]


def classifier_config(source, classes, epochs: int, seed: int, width: int) -> dict:
    """The cache key of a data classifier: how the source is read, what it holds, the training run."""
    from vbugs_ray.datasets.sources import fingerprint

    return {"model": "ToyCNN-data-v1", "source": {"format": source.format, "path": source.path, "size": source.size,
                                                  "split_column": source.split_column, "label": source.label_column,
                                                  "image": source.image_column, "data": fingerprint(source)},
            "classes": list(classes), "epochs": epochs, "seed": seed, "width": width}


def train_classifier(config: dict, source, progress: Progress) -> dict:
    """A ToyCNN on the clean training split, raw pixels in (like a model that never saw a
    corruption), batches of 128 with AdamW and one-cycle learning rates."""
    from vbugs_ray.datasets.sources import labelled_images

    torch.manual_seed(config["seed"])
    images, labels = labelled_images(source, "train", tuple(config["classes"]))
    x, y = to_tensor(images), torch.from_numpy(labels)
    model = ToyCNN(len(config["classes"]), width=config["width"])
    fit(model, x, y, config["epochs"], config["seed"], lambda line: progress(f"data classifier: {line}"), time.time())
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

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        chosen = rng.choice(len(starts), min(per_batch, len(starts)), replace=False)
        idx = np.concatenate([np.arange(starts[g], ends[g]) for g in chosen])
        return toyclip.preprocess(images[idx], size, mean, std), tokenizer([captions[i] for i in idx])

    toyclip.fit_contrastive(model, batch, config["steps"], config["lr"], lambda line: progress(f"data CLIP: {line}"),
                            t0, every=5)
    return model.state_dict()
