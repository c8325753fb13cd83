"""Generator backend ``toyworld``: the procedural renderer, driven by the prompt text only.

Like a diffusion model, it sees the prompt and the row seed, not the row's metadata: whatever
the prompt does not say varies at random. Option: ``resolution`` (pixels per side, 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import option
from vbugs_ray.toyworld import renderer


class ToyWorldGenerator:
    draws_toy_world = True  # what the toy CLIP was trained on (subclasses inherit it)

    @dataclass(frozen=True)
    class Options:
        resolution: int = option(renderer.DEFAULT_RESOLUTION, kind=int, low=16, high=512)

    @classmethod
    def check(cls, options, spec) -> None:
        shapes = renderer.VOCABULARY["class"]
        for i, (name, words) in enumerate(zip(spec.classes, spec.class_phrases)):
            if renderer.parse_prompt(words).get("class") != name:
                raise SpecError(f"classes[{i}]", f"the toyworld generator draws no {quote(name)}; known: {', '.join(shapes)}")
        for axis in spec.axes:
            if axis.name not in renderer.PROPERTIES or axis.name == "class":
                known = ", ".join(p for p in renderer.PROPERTIES if p != "class")
                raise SpecError(f"axes.{axis.name}", f"the toyworld generator has no axis '{axis.name}'; known: {known}")
            for value, phrase in zip(axis.values, axis.phrases):
                if renderer.parse_prompt(phrase).get(axis.name) != value:
                    known = ", ".join(renderer.VOCABULARY[axis.name])
                    raise SpecError(f"axes.{axis.name}", f"the toyworld generator cannot draw {axis.name} "
                                    f"{quote(value)} from the words {quote(phrase)}; known values: {known}")

    @classmethod
    def vocabulary(cls, options, spec) -> dict[str, list[str]]:
        """The renderer's words for every property the spec's axes leave open (size, clutter...),
        by property: failures there are what no axis looks at."""
        open_props = [p for p in renderer.PROPERTIES if p != "class" and p not in spec.axis_names]
        return {p: [renderer.phrase(p, v) for v in renderer.VOCABULARY[p]] for p in open_props}

    def __init__(self, options, role_spec, spec):
        self.resolution = options.resolution

    def generate(self, prompts: list[str], seeds: np.ndarray) -> np.ndarray:
        return renderer.render_prompts(prompts, [int(s) for s in seeds], self.resolution)
