"""Classifier backend ``torchvision``: ``torchvision.models.get_model(name, weights=...)`` with the
weights enum's own preprocessing and category names, or a local state dict.

Options: ``model`` (required; torchvision.models.list_models()), ``weights`` (an enum member such
as IMAGENET1K_V2 or DEFAULT; hub download on first use), ``checkpoint`` (a local state dict instead),
``num_classes``, ``preprocess`` (needed with a checkpoint: size, resize, mean, std...),
``labels`` and ``class_map``.
"""

from __future__ import annotations

import difflib

from vbugs_ray.roles.classifiers.torch_image import TorchImageClassifier, class_map_for, positive_int
from vbugs_ray.roles.preprocess import EvalTransform, parse_preprocess
from vbugs_ray.roles.weights import load_into
from vbugs_ray.spec import SpecError

FIELD = "classifier.options"


def _weights(opts):
    """The weights enum member named by the options, or None (no download: enums are local)."""
    import torchvision

    name = opts.get("model")
    if not isinstance(name, str) or name not in torchvision.models.list_models():
        close = difflib.get_close_matches(str(name), torchvision.models.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise SpecError(f"{FIELD}.model", f"unknown torchvision model {name!r}{hint}")
    weights = opts.get("weights")
    if weights is None:
        return None
    enum = torchvision.models.get_model_weights(name)
    member = str(weights).split(".")[-1]
    if member not in enum.__members__:
        raise SpecError(f"{FIELD}.weights", f"{name} has no weights {weights!r}; known: {', '.join(enum.__members__)}")
    return enum[member]


class TorchvisionClassifier(TorchImageClassifier):
    OPTIONS = ("model", "weights", "checkpoint", "num_classes", "preprocess", *TorchImageClassifier.COMMON_OPTIONS)

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        opts = role_spec.options
        weights = _weights(opts)
        if (weights is None) == (opts.get("checkpoint") is None):
            raise SpecError(f"{FIELD}.weights", "give weights (a torchvision enum member) or checkpoint (a state dict file)")
        if weights is None and "preprocess" not in opts:
            raise SpecError(f"{FIELD}.preprocess", "is required with a checkpoint: size, resize, mean, std")
        if "preprocess" in opts:
            parse_preprocess(opts["preprocess"], f"{FIELD}.preprocess")
        positive_int(opts, "num_classes", FIELD)
        class_map_for(spec, opts, cls._labels(opts, weights), opts.get("num_classes"))

    @staticmethod
    def _labels(opts, weights):
        return list(weights.meta["categories"]) if weights is not None and "categories" in weights.meta else "imagenet"

    def __init__(self, role_spec, spec):
        import torchvision

        opts = role_spec.options
        weights = _weights(opts)
        kwargs = {"num_classes": opts["num_classes"]} if opts.get("num_classes") else {}
        model = torchvision.models.get_model(opts["model"], weights=weights, **kwargs)
        if opts.get("checkpoint"):
            load_into(model, opts["checkpoint"], f"{FIELD}.checkpoint")
        if "preprocess" in opts:
            transform = parse_preprocess(opts["preprocess"], f"{FIELD}.preprocess")
        else:
            preset = weights.transforms()
            transform = EvalTransform(preset.crop_size, preset.resize_size, preset.interpolation.value,
                                      preset.mean, preset.std)
        n_outputs = opts.get("num_classes") or len(weights.meta.get("categories", [])) or 1000
        self._setup(role_spec, spec, model, transform, self._labels(opts, weights), n_outputs)
