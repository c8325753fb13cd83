"""Classifier backend ``torchvision``: ``torchvision.models.get_model(name, weights=...)`` with the
weights enum's own preprocessing and category names, or a local state dict.

Options: ``model`` (required; torchvision.models.list_models()), ``weights`` (an enum member such
as IMAGENET1K_V2 or DEFAULT; hub download on first use), ``checkpoint`` (a local state dict instead),
``num_classes``, ``preprocess`` (needed with a checkpoint: size, resize, mean, std...),
``labels`` and ``class_map``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.classifiers._torch_image import (FIELD, TorchImageClassifier, class_map_for, class_map_option,
                                                      labels_option)
from vbugs_ray.roles.preprocess import EvalTransform, preprocess_settings, transform_from_settings
from vbugs_ray.roles.weights import load_into


def _weights(options):
    """The weights enum member named by the options, or None (no download: enums are local)."""
    import torchvision

    name = options.model
    if name not in torchvision.models.list_models():
        close = difflib.get_close_matches(str(name), torchvision.models.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise SpecError(f"{FIELD}.model", f"unknown torchvision model {quote(name)}{hint}")
    if options.weights is None:
        return None
    enum = torchvision.models.get_model_weights(name)
    member = str(options.weights).split(".")[-1]
    if member not in enum.__members__:
        raise SpecError(f"{FIELD}.weights", f"{name} has no weights {quote(options.weights)}; "
                        f"known: {', '.join(enum.__members__)}")
    return enum[member]


def _labels(options, weights):
    if options.labels is not None:
        return options.labels
    return list(weights.meta["categories"]) if weights is not None and "categories" in weights.meta else "imagenet"


class TorchvisionClassifier(TorchImageClassifier):
    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="a torchvision model (torchvision.models.list_models())")
        weights: str | None = option(None, kind=str)
        checkpoint: str | None = option(None, kind=str)
        num_classes: int | None = option(None, kind=int, low=1)
        preprocess: dict | None = option(None, parse=preprocess_settings)
        labels: object = labels_option()
        class_map: dict | None = class_map_option()

    @classmethod
    def check(cls, options, spec) -> None:
        weights = _weights(options)
        if (weights is None) == (options.checkpoint is None):
            raise SpecError(f"{FIELD}.weights", "give weights (a torchvision enum member) or checkpoint (a state dict file)")
        if weights is None and options.preprocess is None:
            raise SpecError(f"{FIELD}.preprocess", "is required with a checkpoint: size, resize, mean, std")
        class_map_for(spec, _labels(options, weights), options.class_map, options.num_classes)

    def __init__(self, options, role_spec, spec):
        import torchvision

        weights = _weights(options)
        kwargs = {"num_classes": options.num_classes} if options.num_classes else {}
        model = torchvision.models.get_model(options.model, weights=weights, **kwargs)
        if options.checkpoint:
            load_into(model, options.checkpoint, f"{FIELD}.checkpoint")
        if options.preprocess is not None:
            transform = transform_from_settings(options.preprocess)
        else:
            preset = weights.transforms()
            transform = EvalTransform(preset.crop_size, preset.resize_size, preset.interpolation.value,
                                      preset.mean, preset.std)
        n_outputs = options.num_classes or len(weights.meta.get("categories", [])) or 1000
        self._setup(role_spec, spec, model, transform, _labels(options, weights), options.class_map, n_outputs)
