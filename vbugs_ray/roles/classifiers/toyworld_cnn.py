"""Classifier backend ``toyworld_cnn``: a small CNN trained on a biased sample of the toy world.

Options: ``train_images`` (10000), ``epochs`` (6), ``seed`` (0) and ``bugs``: a list of planted
bugs (see vbugs_ray.toyworld.classifier). Training runs once on the driver (``prepare``) and is
cached by its config; actors only load the cached weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import option
from vbugs_ray.roles.classifiers._labels import ClassMap
from vbugs_ray.toyworld import classifier as toy
from vbugs_ray.toyworld import renderer

BUG_KEYS = ("where", "keep", "spurious", "strength")


def _props(value, where: str, what: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise SpecError(where, f"expected a mapping property -> value ({what})")
    for prop, val in value.items():
        if prop not in renderer.PROPERTIES:
            raise SpecError(f"{where}.{prop}", f"unknown property; known: {', '.join(renderer.PROPERTIES)}")
        if val not in renderer.VOCABULARY[prop]:
            raise SpecError(f"{where}.{prop}", f"unknown value {val!r}; known: {', '.join(renderer.VOCABULARY[prop])}")
    return dict(value)


def parse_bugs(raw, field: str = "classifier.options.bugs") -> list[toy.PlantedBug]:
    """The planted bugs, checked: each names renderer properties and values it can draw."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(field, "expected a list of planted bugs")
    bugs = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise SpecError(where, "expected a mapping with where and keep, or where, spurious and strength")
        for key in item:
            if key not in BUG_KEYS:
                raise SpecError(f"{where}.{key}", f"unknown key; allowed: {', '.join(BUG_KEYS)}")
        cond = _props(item.get("where"), f"{where}.where", "which training images the bug touches")
        if ("keep" in item) == ("spurious" in item):
            raise SpecError(where, "give keep (under-representation) or spurious + strength (spurious correlation)")
        if "keep" in item:
            keep = item["keep"]
            if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep < 1:
                raise SpecError(f"{where}.keep", f"expected a fraction in [0, 1); got {keep!r}")
            bugs.append(toy.PlantedBug(where=cond, keep=float(keep)))
            continue
        spurious = _props(item["spurious"], f"{where}.spurious", "one property -> value")
        if len(spurious) != 1 or next(iter(spurious)) in cond:
            raise SpecError(f"{where}.spurious", "name exactly one property, one that where does not fix")
        strength = item.get("strength")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise SpecError(f"{where}.strength", f"expected a fraction in (0, 1]; got {strength!r}")
        bugs.append(toy.PlantedBug(where=cond, spurious=spurious, strength=float(strength)))
    return bugs


def training_config(options, spec) -> dict:
    """The toy classifier's training run: its options, the spec's classes, and the resolution
    the spec's generator draws at (read from the generator's options, as data)."""
    return toy.training_config(classes=spec.classes, bugs=options.bugs, train_images=options.train_images,
                               epochs=options.epochs, seed=options.seed,
                               resolution=renderer.resolution_in(spec.generator.options))


class ToyWorldClassifier:
    @dataclass(frozen=True)
    class Options:
        train_images: int = option(10000, kind=int, low=100)
        epochs: int = option(6, kind=int, low=1)
        seed: int = option(0, kind=int, low=0)
        bugs: list = option([], parse=parse_bugs)

    @classmethod
    def check(cls, options, spec) -> None:
        for i, bug in enumerate(options.bugs):
            cls_value = bug.where.get("class")
            if cls_value is not None and cls_value not in spec.classes:
                raise SpecError(f"classifier.options.bugs[{i}].where.class", f"'{cls_value}' is not one of the spec's classes")

    @classmethod
    def prepare(cls, options, spec, progress=print) -> None:
        toy.load_or_train(training_config(options, spec), progress)

    def __init__(self, options, role_spec, spec):
        self.model = toy.load_or_train(training_config(options, spec), progress=lambda _: None)
        # the toy CNN's outputs are the spec's classes, in order
        self.class_map = ClassMap(spec.classes, spec.classes, [[i] for i in range(len(spec.classes))])

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, len(spec.classes)), columns in spec class order."""
        return torch.softmax(self.model(toy.to_tensor(images)), dim=1).numpy()
