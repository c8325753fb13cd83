"""Classifier backend ``toyworld_cnn``: a small CNN trained on a biased sample of the toy world.

Options: ``train_images`` (10000), ``epochs`` (6), ``seed`` (0) and ``bugs``: a list of planted
bugs (see vbugs_ray.toyworld.classifier), each one of under-representation (``where`` + ``keep``),
spurious correlation (``where`` + ``spurious`` + ``strength``) or mislabelled subgroup (``where``
+ ``relabel`` + ``share``); ``where`` may name any renderer property. Training runs once on the
driver (``prepare``) and is cached by its config; actors only load the cached weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import check_seed, option
from vbugs_ray.roles.classifiers._labels import ClassMap
from vbugs_ray.toyworld import classifier as toy
from vbugs_ray.toyworld import renderer

BUG_KEYS = ("where", "keep", "spurious", "strength", "relabel", "share")
# kind -> the keys (besides where) that make a bug of that kind
BUG_KINDS = {
    "under-representation": ("keep",),
    "spurious correlation": ("spurious", "strength"),
    "mislabelled subgroup": ("relabel", "share"),
}
_KINDS = "keep (under-representation), spurious + strength (spurious correlation) or relabel + share (mislabelled subgroup)"


def _props(value, where: str, what: str) -> dict:
    if not isinstance(value, dict) or not value:
        raise SpecError(where, f"expected a mapping property -> value ({what})")
    for prop, val in value.items():
        if prop not in renderer.PROPERTIES:
            raise SpecError(f"{where}.{prop}", f"unknown property; known: {', '.join(renderer.PROPERTIES)}")
        if not isinstance(val, str) or val not in renderer.VOCABULARY[prop]:
            raise SpecError(f"{where}.{prop}", f"unknown value {quote(val)}; known: {', '.join(renderer.VOCABULARY[prop])}")
    return dict(value)


def _fraction(value, field: str, closed_high: bool) -> float:
    """A fraction in (0, 1] (closed_high) or [0, 1)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (
        0 < value <= 1 if closed_high else 0 <= value < 1)
    if not ok:
        raise SpecError(field, f"expected a fraction in {'(0, 1]' if closed_high else '[0, 1)'}; got {quote(value)}")
    return float(value)


def _kind_of(item: dict, where: str) -> str:
    """The one kind of bug whose keys ``item`` gives (a one-line error naming the field otherwise)."""
    kinds: dict[str, str] = {}  # kind -> first key of it in the item
    for key in item:
        for kind, keys in BUG_KINDS.items():
            if key in keys:
                kinds.setdefault(kind, key)
    if not kinds:
        raise SpecError(where, "give " + _KINDS)
    if len(kinds) > 1:
        (first, first_key), (second, second_key) = list(kinds.items())[:2]
        raise SpecError(f"{where}.{second_key}", f"mixes a {second} key with {first_key} ({first}); "
                                                 f"a bug is one kind: {_KINDS}")
    return next(iter(kinds))


def parse_bugs(raw, field: str = "classifier.options.bugs") -> list[toy.PlantedBug]:
    """The planted bugs, checked: each names renderer properties and values it can draw.

    ``where`` may name any renderer property (class, background, lighting, colour, size,
    clutter), whether or not the audit spec has an axis for it. Whether a class named in
    ``where`` or ``relabel`` is one of the spec's classes is checked against the spec in
    ``ToyWorldClassifier.check``.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(field, "expected a list of planted bugs")
    bugs = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise SpecError(where, "expected a mapping with where and keep, where, spurious and strength, "
                                   "or where, relabel and share")
        for key in item:
            if key not in BUG_KEYS:
                raise SpecError(f"{where}.{key}", f"unknown key; allowed: {', '.join(BUG_KEYS)}")
        cond = _props(item.get("where"), f"{where}.where", "which training images the bug touches")
        kind = _kind_of(item, where)
        if kind == "under-representation":
            keep = _fraction(item["keep"], f"{where}.keep", closed_high=False)
            bugs.append(toy.PlantedBug(where=cond, keep=keep))
        elif kind == "spurious correlation":
            if "spurious" not in item:
                raise SpecError(f"{where}.spurious", "missing: name one property -> value that the matching images show")
            spurious = _props(item["spurious"], f"{where}.spurious", "one property -> value")
            if len(spurious) != 1 or next(iter(spurious)) in cond:
                raise SpecError(f"{where}.spurious", "name exactly one property, one that where does not fix")
            strength = _fraction(item.get("strength"), f"{where}.strength", closed_high=True)
            bugs.append(toy.PlantedBug(where=cond, spurious=spurious, strength=strength))
        else:
            relabel = item.get("relabel")
            classes = renderer.VOCABULARY["class"]
            if "class" not in cond:
                raise SpecError(f"{where}.where", "a mislabelled subgroup needs where.class (the class its images show)")
            if not isinstance(relabel, str) or relabel not in classes:
                raise SpecError(f"{where}.relabel", f"expected the class to label the matching images as; "
                                                    f"got {quote(relabel)}; known: {', '.join(classes)}")
            if relabel == cond["class"]:
                raise SpecError(f"{where}.relabel", f"equals where.class ({quote(relabel)}): relabel to another class")
            share = _fraction(item.get("share"), f"{where}.share", closed_high=True)
            bugs.append(toy.PlantedBug(where=cond, relabel=relabel, share=share))
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
        seed: int = option(0, parse=check_seed)
        bugs: list = option([], parse=parse_bugs)

    @classmethod
    def check(cls, options, spec) -> None:
        for i, bug in enumerate(options.bugs):
            cls_value = bug.where.get("class")
            if cls_value is not None and cls_value not in spec.classes:
                raise SpecError(f"classifier.options.bugs[{i}].where.class",
                                f"{quote(cls_value)} is not one of the spec's classes")
            if bug.relabel is not None and bug.relabel not in spec.classes:
                raise SpecError(f"classifier.options.bugs[{i}].relabel",
                                f"{quote(bug.relabel)} is not one of the spec's classes")

    @classmethod
    def prepare(cls, options, spec, progress=print) -> list:
        return [toy.weights_path(training_config(options, spec), progress)]

    def __init__(self, options, role_spec, spec):
        self.model = toy.load_or_train(training_config(options, spec), progress=lambda _: None)
        # the toy CNN's outputs are the spec's classes, in order
        self.class_map = ClassMap(spec.classes, spec.classes, [[i] for i in range(len(spec.classes))])

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, len(spec.classes)), columns in spec class order."""
        return torch.softmax(self.model(toy.to_tensor(images)), dim=1).numpy()
