"""Classifier backend ``module``: any torch module built by an importable callable.

Options: ``callable`` (required; 'package.module:build' returning an nn.Module that maps a
normalised (N, 3, H, W) batch to logits), ``kwargs`` (passed to it), ``checkpoint`` (a state dict
file), ``preprocess`` (required: size, resize, crop_pct, interpolation, mean, std), ``labels``
(output names; 'output_i' if absent) and ``class_map``. The callable must be importable on every
Ray worker (an installed package, or the job's working_dir).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.classifiers._torch_image import (FIELD, TorchImageClassifier, class_map_for, class_map_option,
                                                      labels_option)
from vbugs_ray.roles.preprocess import preprocess_settings, transform_from_settings
from vbugs_ray.roles.weights import import_callable, load_into


class ModuleClassifier(TorchImageClassifier):
    @dataclass(frozen=True)
    class Options:
        callable: str = option(REQUIRED, kind=str, doc="'package.module:build' returning a torch module")
        kwargs: dict = option({}, kind=dict, doc="keyword arguments for the callable")
        checkpoint: str | None = option(None, kind=str)
        preprocess: dict = option(REQUIRED, parse=preprocess_settings,
                                  doc="size, and optionally resize, mean, std, interpolation")
        labels: object = labels_option()
        class_map: dict | None = class_map_option()

    @classmethod
    def check(cls, options, spec) -> None:
        import_callable(options.callable, f"{FIELD}.callable")
        class_map_for(spec, options.labels, options.class_map)

    def __init__(self, options, role_spec, spec):
        model = import_callable(options.callable, f"{FIELD}.callable")(**options.kwargs)
        if not isinstance(model, torch.nn.Module):
            raise SpecError(f"{FIELD}.callable", f"{options.callable} returned a {type(model).__name__}, not a torch module")
        if options.checkpoint:
            load_into(model, options.checkpoint, f"{FIELD}.checkpoint")
        transform = transform_from_settings(options.preprocess)
        with torch.inference_mode():
            n_outputs = model.eval()(torch.zeros(1, 3, *transform.crop_size)).shape[1]
        self._setup(role_spec, spec, model, transform, options.labels, options.class_map, n_outputs)
