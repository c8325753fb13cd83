"""What the timm, torchvision and module classifiers share: the device, batched preprocessing on
that device (vbugs_ray.roles.preprocess), softmax over the model's outputs, and the class map."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import option
from vbugs_ray.roles.classifiers._labels import ClassMap, build_class_map, label_names
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.preprocess import EvalTransform
from vbugs_ray.roles.weights import load_state_dict

FIELD = "classifier.options"


def labels_option(default: Any = None) -> Any:
    """``labels``: 'imagenet', a list of names, or a .txt / .json label file."""
    return option(default)


def class_map_option() -> Any:
    """``class_map``: spec class -> output index, output name, or a list of them (a superclass)."""
    return option(None, kind=dict, doc="class -> output index, output name, or list of them")


def class_map_for(spec, labels: Any, class_map: dict | None, n_outputs: int | None = None) -> ClassMap:
    """The spec's classes mapped onto the model's outputs, named by ``labels``."""
    names = label_names(labels, f"{FIELD}.labels")
    if names is None:
        if n_outputs is None:
            # checking without the model: check index mappings against the largest index given
            given = [v for vs in (class_map or {}).values() for v in (vs if isinstance(vs, list) else [vs])]
            n_outputs = max([v + 1 for v in given if isinstance(v, int)] or [1])
        names = [f"output_{i}" for i in range(n_outputs)]
    elif n_outputs is not None and len(names) != n_outputs:
        raise SpecError(f"{FIELD}.labels", f"{len(names)} label names for a model with {n_outputs} outputs")
    return build_class_map(spec.classes, names, class_map, f"{FIELD}.class_map")


class TorchImageClassifier:
    """Subclasses load the model and call ``_setup``; this class runs it."""

    @classmethod
    def prepare(cls, options, spec, progress=print) -> None:
        """Fail before any actor starts if the checkpoint cannot be read."""
        if options.checkpoint:
            load_state_dict(options.checkpoint, f"{FIELD}.checkpoint")

    def _setup(self, role_spec, spec, model: torch.nn.Module, transform: EvalTransform, labels: Any,
               class_map: dict | None, n_outputs: int) -> None:
        self.device = resolve_device("classifier", role_spec)
        self.dtype = resolve_dtype("classifier", role_spec, self.device)
        self.model = model.eval().to(self.device, self.dtype)
        self.transform = transform
        self.class_map = class_map_for(spec, labels, class_map, n_outputs)

    @torch.inference_mode()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Softmax over all the model's outputs, (N, n_outputs) float32."""
        logits = self.model(self.transform(images, self.device, self.dtype))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
