"""Classifier backend ``module``: any torch module built by an importable callable.

Options: ``callable`` (required; 'package.module:build' returning an nn.Module that maps a
normalised (N, 3, H, W) batch to logits), ``kwargs`` (passed to it), ``checkpoint`` (a state dict
file), ``preprocess`` (required: size, resize, crop_pct, interpolation, mean, std), ``labels``
(output names; 'output_i' if absent) and ``class_map``. The callable must be importable on every
Ray worker (an installed package, or the job's working_dir).
"""

from __future__ import annotations

import torch

from vbugs_ray.roles.classifiers.torch_image import TorchImageClassifier, class_map_for
from vbugs_ray.roles.preprocess import parse_preprocess
from vbugs_ray.roles.weights import import_callable, load_into
from vbugs_ray.spec import SpecError

FIELD = "classifier.options"


class ModuleClassifier(TorchImageClassifier):
    OPTIONS = ("callable", "kwargs", "checkpoint", "preprocess", *TorchImageClassifier.COMMON_OPTIONS)

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        opts = role_spec.options
        import_callable(opts.get("callable"), f"{FIELD}.callable")
        if not isinstance(opts.get("kwargs", {}), dict):
            raise SpecError(f"{FIELD}.kwargs", "expected a mapping of keyword arguments")
        if "preprocess" not in opts:
            raise SpecError(f"{FIELD}.preprocess", "is required: size, and optionally resize, mean, std, interpolation")
        parse_preprocess(opts["preprocess"], f"{FIELD}.preprocess")
        class_map_for(spec, opts, None)

    def __init__(self, role_spec, spec):
        opts = role_spec.options
        model = import_callable(opts["callable"], f"{FIELD}.callable")(**opts.get("kwargs", {}))
        if not isinstance(model, torch.nn.Module):
            raise SpecError(f"{FIELD}.callable", f"{opts['callable']} returned a {type(model).__name__}, not a torch module")
        if opts.get("checkpoint"):
            load_into(model, opts["checkpoint"], f"{FIELD}.checkpoint")
        transform = parse_preprocess(opts["preprocess"], f"{FIELD}.preprocess")
        size = transform.crop_size
        with torch.inference_mode():
            n_outputs = model.eval()(torch.zeros(1, 3, *size)).shape[1]
        self._setup(role_spec, spec, model, transform, None, n_outputs)
