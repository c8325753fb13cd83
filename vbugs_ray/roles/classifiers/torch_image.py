"""What the timm, torchvision and module classifiers share: the device, batched preprocessing on
that device (vbugs_ray.roles.preprocess), softmax over the model's outputs, and the class map."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vbugs_ray.roles.classifiers.labels import ClassMap, build_class_map, label_names
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.roles.weights import load_state_dict
from vbugs_ray.spec import SpecError


def positive_int(options: dict, key: str, field: str) -> int | None:
    value = options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SpecError(f"{field}.{key}", f"expected a positive integer; got {value!r}")
    return value


def class_map_for(spec, options: dict, default_labels: Any, n_outputs: int | None = None) -> ClassMap:
    """The spec's classes mapped onto the model's outputs (labels default: ``default_labels``)."""
    field = "classifier.options"
    names = label_names(options.get("labels", default_labels), f"{field}.labels")
    if names is None:
        if n_outputs is None:
            # validation without the model: check index mappings against the largest index given
            given = [v for vs in (options.get("class_map") or {}).values() for v in (vs if isinstance(vs, list) else [vs])]
            n_outputs = max([v + 1 for v in given if isinstance(v, int)] or [1])
        names = [f"output_{i}" for i in range(n_outputs)]
    elif n_outputs is not None and len(names) != n_outputs:
        raise SpecError(f"{field}.labels", f"{len(names)} label names for a model with {n_outputs} outputs")
    return build_class_map(spec.classes, names, options.get("class_map"), f"{field}.class_map")


class TorchImageClassifier:
    """Subclasses load ``self.model`` and set ``self.transform``; this class runs them."""

    COMMON_OPTIONS = ("labels", "class_map")

    @classmethod
    def prepare(cls, role_spec, spec, progress=print) -> None:
        """Fail before any actor starts if the checkpoint cannot be read."""
        if role_spec.options.get("checkpoint"):
            load_state_dict(role_spec.options["checkpoint"], "classifier.options.checkpoint")

    def _setup(self, role_spec, spec, model: torch.nn.Module, transform: EvalTransform, default_labels: Any,
               n_outputs: int) -> None:
        self.device = resolve_device("classifier", role_spec)
        self.dtype = resolve_dtype("classifier", role_spec, self.device)
        self.model = model.eval().to(self.device, self.dtype)
        self.transform = transform
        self.class_map = class_map_for(spec, role_spec.options, default_labels, n_outputs)

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Softmax over all the model's outputs, (N, n_outputs) float32."""
        logits = self.model(self.transform(images, self.device, self.dtype))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
