"""Classifier backend ``timm``: any ``timm.create_model`` name, with hub weights (``pretrained``) or
a local checkpoint, preprocessed as ``timm.data.resolve_data_config`` says for that model.

Options: ``model`` (required; a timm name or ``hf-hub:org/repo``), ``pretrained`` (true),
``checkpoint`` (a local weights file, instead of hub weights), ``num_classes`` (the model's own by
default), ``labels`` ('imagenet' by default, a list or a label file) and ``class_map``.
"""

from __future__ import annotations

import difflib

from vbugs_ray.roles.classifiers.torch_image import TorchImageClassifier, class_map_for, positive_int
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.roles.weights import load_into
from vbugs_ray.spec import SpecError

FIELD = "classifier.options"


def check_model_name(name) -> None:
    import timm

    if not isinstance(name, str) or not name:
        raise SpecError(f"{FIELD}.model", "is required: a timm model name (timm.list_models()) or hf-hub:org/repo")
    if name.startswith("hf-hub:") or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise SpecError(f"{FIELD}.model", f"unknown timm model {name!r}{hint}")


class TimmClassifier(TorchImageClassifier):
    OPTIONS = ("model", "pretrained", "checkpoint", "num_classes", *TorchImageClassifier.COMMON_OPTIONS)

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        opts = role_spec.options
        check_model_name(opts.get("model"))
        if not isinstance(opts.get("pretrained", True), bool):
            raise SpecError(f"{FIELD}.pretrained", "expected true or false")
        positive_int(opts, "num_classes", FIELD)
        class_map_for(spec, opts, "imagenet", opts.get("num_classes"))

    def __init__(self, role_spec, spec):
        import timm
        from timm.data import resolve_data_config

        opts = role_spec.options
        kwargs = {"num_classes": opts["num_classes"]} if opts.get("num_classes") else {}
        checkpoint = opts.get("checkpoint")
        try:
            model = timm.create_model(opts["model"], pretrained=bool(opts.get("pretrained", True)) and not checkpoint,
                                      **kwargs)
        except RuntimeError as exc:  # hub or config failures surface as RuntimeError in timm
            raise SpecError(f"{FIELD}.model", f"timm could not build {opts['model']!r}: {str(exc).splitlines()[0][:200]}") from None
        if checkpoint:
            load_into(model, checkpoint, f"{FIELD}.checkpoint")
        transform = EvalTransform.from_timm_config(resolve_data_config(model=model))
        self._setup(role_spec, spec, model, transform, "imagenet", model.num_classes)
