"""Generator backend ``toyworld``: the procedural renderer, driven by the prompt text only.

Like a diffusion model, it sees the prompt and the row seed, not the row's metadata: whatever
the prompt does not say varies at random.
"""

from __future__ import annotations

import numpy as np

from vbugs_ray.spec import SpecError
from vbugs_ray.toyworld import renderer

OPTIONS = ("resolution",)


def resolution_of(role_spec) -> int:
    return int(role_spec.options.get("resolution", 64))


class ToyWorldGenerator:
    OPTIONS = OPTIONS  # option keys the registry accepts for this backend

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        res = role_spec.options.get("resolution", 64)
        if not isinstance(res, int) or isinstance(res, bool) or not 16 <= res <= 512:
            raise SpecError("generator.options.resolution", f"expected an integer in 16..512; got {res!r}")
        shapes = renderer.VOCABULARY["class"]
        for i, (name, words) in enumerate(zip(spec.classes, spec.class_phrases)):
            if renderer.parse_prompt(words).get("class") != name:
                raise SpecError(f"classes[{i}]", f"the toyworld generator draws no '{name}'; known: {', '.join(shapes)}")
        for axis in spec.axes:
            if axis.name not in renderer.PROPERTIES or axis.name == "class":
                known = ", ".join(p for p in renderer.PROPERTIES if p != "class")
                raise SpecError(f"axes.{axis.name}", f"the toyworld generator has no axis '{axis.name}'; known: {known}")
            for value, phrase in zip(axis.values, axis.phrases):
                if renderer.parse_prompt(phrase).get(axis.name) != value:
                    known = ", ".join(renderer.VOCABULARY[axis.name])
                    raise SpecError(f"axes.{axis.name}", f"the toyworld generator cannot draw {axis.name} "
                                    f"'{value}' from the words {phrase!r}; known values: {known}")

    def __init__(self, role_spec, spec):
        self.resolution = resolution_of(role_spec)

    def generate(self, prompts: list[str], seeds: np.ndarray) -> np.ndarray:
        return renderer.render_prompts(prompts, [int(s) for s in seeds], self.resolution)
