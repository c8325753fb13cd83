"""Classifier backend ``timm``: any ``timm.create_model`` name, with hub weights (``pretrained``) or
a local checkpoint, preprocessed as ``timm.data.resolve_data_config`` says for that model.

Options: ``model`` (required; a timm name or ``hf-hub:org/repo``), ``pretrained`` (true),
``checkpoint`` (a local weights file, instead of hub weights), ``num_classes`` (the model's own by
default), ``labels`` ('imagenet' by default, a list or a label file) and ``class_map``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.classifiers._torch_image import (FIELD, TorchImageClassifier, class_map_for, class_map_option,
                                                      labels_option)
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.roles.weights import load_into


def check_model_name(name) -> None:
    import timm

    if name.startswith("hf-hub:") or timm.is_model(name.split(".")[0]):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise SpecError(f"{FIELD}.model", f"unknown timm model {quote(name)}{hint}")


class TimmClassifier(TorchImageClassifier):
    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="a timm model name (timm.list_models()) or hf-hub:org/repo")
        pretrained: bool = option(True, kind=bool)
        checkpoint: str | None = option(None, kind=str)
        num_classes: int | None = option(None, kind=int, low=1)
        labels: object = labels_option("imagenet")
        class_map: dict | None = class_map_option()

    @classmethod
    def check(cls, options, spec) -> None:
        check_model_name(options.model)
        class_map_for(spec, options.labels, options.class_map, options.num_classes)

    def __init__(self, options, role_spec, spec):
        import timm
        from timm.data import resolve_data_config

        kwargs = {"num_classes": options.num_classes} if options.num_classes else {}
        try:
            model = timm.create_model(options.model, pretrained=options.pretrained and not options.checkpoint, **kwargs)
        except RuntimeError as exc:  # hub or config failures surface as RuntimeError in timm
            raise SpecError(f"{FIELD}.model", f"timm could not build {quote(options.model)}: "
                            f"{str(exc).splitlines()[0][:200]}") from None
        if options.checkpoint:
            load_into(model, options.checkpoint, f"{FIELD}.checkpoint")
        transform = EvalTransform.from_timm_config(resolve_data_config(model=model))
        self._setup(role_spec, spec, model, transform, options.labels, options.class_map, model.num_classes)
