"""Classifier backend ``data_cnn``: a small CNN trained on the clean training split of the
spec's dataset source (the ``dataset`` or ``corruptions`` generator's: digits, idx, or a source
with a ``split_column``), for the
real-data examples: the model under audit never saw a corruption.

Options: ``epochs`` (6), ``width`` (32), ``seed`` (0). Trained once on the driver and cached by
its config; actors load the cached weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.datasets import training
from vbugs_ray.datasets.sources import has_splits
from vbugs_ray.errors import SpecError
from vbugs_ray.fields import check_seed, option
from vbugs_ray.roles.classifiers._labels import ClassMap
from vbugs_ray.toyworld.classifier import to_tensor


def source_of(spec, role: str):
    """The spec's dataset source, if its generator reads one with a training split; else a SpecError."""
    from vbugs_ray.roles import registry

    cls = registry.backend_class("generator", spec.generator.backend)
    source = getattr(registry.options_of("generator", spec.generator), "source", None) \
        if getattr(cls, "reads_dataset", False) else None
    if source is None or not has_splits(source):
        raise SpecError(f"{role}.backend", f"{getattr(spec, role).backend} trains on a dataset source's training split: "
                                           "use the dataset or corruptions generator with a digits or idx source, "
                                           "or a split_column")
    return source


def _config(options, spec) -> dict:
    return training.classifier_config(source_of(spec, "classifier"), spec.classes, options.epochs, options.seed,
                                      options.width)


class DataCNNClassifier:
    @dataclass(frozen=True)
    class Options:
        epochs: int = option(6, kind=int, low=1, high=1000)
        width: int = option(32, kind=int, low=4, high=512)
        seed: int = option(0, parse=check_seed)

    @classmethod
    def check(cls, options, spec) -> None:
        if source_of(spec, "classifier").split == "train":
            raise SpecError("generator.options.source.split", "is train, the split data_cnn trains on: the model would "
                                                              "be audited on its own training images; audit test")

    @classmethod
    def prepare(cls, options, spec, progress=print) -> list:
        return [training.classifier_path(_config(options, spec), source_of(spec, "classifier"), progress)]

    def __init__(self, options, role_spec, spec):
        path = training.classifier_path(_config(options, spec), source_of(spec, "classifier"), lambda _: None)
        self.model = training.load_classifier(path)
        self.class_map = ClassMap(spec.classes, spec.classes, [[i] for i in range(len(spec.classes))])

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, len(spec.classes)), columns in spec class order."""
        return torch.softmax(self.model(to_tensor(images)), dim=1).numpy()
