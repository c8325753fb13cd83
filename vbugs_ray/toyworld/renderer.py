"""Procedural renderer of the toy world: the ground truth behind the embedded default.

Every image is a function of its property dict and its seed only (never of the batch it is drawn
in), so a row renders the same wherever it runs. Per-image random draws (position, rotation,
texture noise, clutter) come from a per-image ``numpy.random.Generator``; the pixel work is
vectorised over the whole batch, one shape at a time.

Properties (``PROPERTIES``): ``class`` (the shape), ``background``, ``lighting``, ``colour``,
``size``, ``clutter``. A property that the caller does not set is drawn at random from the seed.
``parse_prompt`` reads properties from words ("a red star on snow at night, heavy clutter").
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np

RENDERER_VERSION = 1
DEFAULT_RESOLUTION = 64  # pixels per side

# property -> value -> phrases that name it in a prompt (first phrase is the canonical wording)
VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "class": {
        "circle": ("circle", "disc", "disk"),
        "square": ("square",),
        "triangle": ("triangle",),
        "star": ("star",),
        "cross": ("cross", "plus sign"),
        "ring": ("ring", "donut", "annulus"),
    },
    "background": {
        "grass": ("grass", "lawn", "meadow"),
        "snow": ("snow",),
        "sand": ("sand", "desert", "beach"),
        "water": ("water", "sea", "lake"),
        "brick": ("brick", "wall"),
    },
    "lighting": {
        "day": ("daylight", "day", "sunny"),
        "dusk": ("dusk", "sunset"),
        "night": ("night", "dark"),
        "fog": ("fog", "foggy", "mist"),
    },
    "colour": {
        "red": ("red",),
        "green": ("green",),
        "blue": ("blue",),
        "yellow": ("yellow",),
        "purple": ("purple", "violet"),
        "orange": ("orange",),
    },
    "size": {
        "small": ("small", "tiny"),
        "medium": ("medium", "medium-sized"),
        "large": ("large", "big", "huge"),
    },
    "clutter": {
        "none": ("no clutter", "plain", "clean"),
        "light": ("light clutter", "some clutter"),
        "heavy": ("heavy clutter", "cluttered", "busy"),
    },
}
PROPERTIES: tuple[str, ...] = tuple(VOCABULARY)

_COLOURS = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.05),
}
_BACKGROUNDS = {  # base colour, texture amplitude
    "grass": ((0.30, 0.55, 0.20), 0.18),
    "snow": ((0.90, 0.92, 0.95), 0.06),
    "sand": ((0.85, 0.75, 0.50), 0.10),
    "water": ((0.20, 0.45, 0.70), 0.12),
    "brick": ((0.62, 0.28, 0.20), 0.10),
}
_SIZES = {"small": 0.16, "medium": 0.24, "large": 0.34}  # radius as a fraction of the image side
_CLUTTER = {"none": 0, "light": 3, "heavy": 7}
_MAX_CLUTTER = max(_CLUTTER.values())
_CHUNK = 128


def _phrase_index() -> list[tuple[re.Pattern[str], str, str]]:
    """(pattern, property, value), longest phrase first so 'heavy clutter' wins over parts."""
    entries = [
        (phrase, prop, value)
        for prop, values in VOCABULARY.items()
        for value, phrases in values.items()
        for phrase in phrases
    ]
    entries.sort(key=lambda e: -len(e[0]))
    return [(re.compile(r"\b" + re.escape(p) + r"\b"), prop, value) for p, prop, value in entries]


_PHRASES = _phrase_index()


def parse_prompt(prompt: str) -> dict[str, str]:
    """Properties named in a prompt; the first (longest) phrase found for a property wins."""
    text = prompt.lower()
    found: dict[str, str] = {}
    for pattern, prop, value in _PHRASES:
        if prop in found:
            continue
        match = pattern.search(text)
        if match:
            found[prop] = value
            text = text[: match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    return found


_LIGHTING_PHRASE = {"day": "in daylight", "dusk": "at dusk", "night": "at night", "fog": "in fog"}


def phrase(prop: str, value: str) -> str:
    """The words that name one property value in a prompt (parse_prompt reads them back)."""
    if prop == "lighting":
        return _LIGHTING_PHRASE[value]
    if prop == "background":
        return "on " + VOCABULARY[prop][value][0]
    return VOCABULARY[prop][value][0]


def describe(props: Mapping[str, str]) -> str:
    """A prompt naming the given properties in the renderer's own words."""
    head = " ".join(phrase(p, props[p]) for p in ("size", "colour", "class") if p in props)
    tail = [phrase(p, props[p]) for p in ("background", "lighting") if p in props]
    text = " ".join(["a " + (head or "shape")] + tail)
    return text + (", " + phrase("clutter", props["clutter"]) if "clutter" in props else "")


def complete_properties(props: Mapping[str, str], seed: int) -> dict[str, str]:
    """Fill every property the caller left open with a value drawn from the seed."""
    rng = np.random.default_rng([int(seed), 7919])
    full = {}
    for prop in PROPERTIES:
        values = list(VOCABULARY[prop])
        draw = values[int(rng.integers(len(values)))]
        full[prop] = props.get(prop, draw)
    for prop, value in props.items():
        if prop not in VOCABULARY or value not in VOCABULARY[prop]:
            raise ValueError(f"toy world has no {prop}={value!r}; known: "
                             f"{sorted(VOCABULARY.get(prop, {}))}")
    return full


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of one shape in rotated, centred coordinates (u, v) with radius r."""
    rho = np.sqrt(u * u + v * v)
    if shape == "circle":
        return rho < r
    if shape == "ring":
        return (rho < r) & (rho > 0.55 * r)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.82 * r
    if shape == "triangle":
        return (v > -0.5 * r) & (v < r - np.sqrt(3.0) * np.abs(u))
    if shape == "star":
        theta = np.arctan2(v, u)
        return rho < r * (0.42 + 0.58 * ((np.cos(5 * theta) + 1) / 2) ** 2)
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))
    raise ValueError(f"unknown shape {shape!r}")


def render(props_list: Sequence[Mapping[str, str]], seeds: Sequence[int], resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Render images (N, H, W, 3) uint8. Open properties are drawn from each image's seed."""
    n = len(props_list)
    if n != len(seeds):
        raise ValueError("render: props_list and seeds differ in length")
    if n > _CHUNK:  # small chunks stay in cache; each image depends only on its own seed anyway
        return np.concatenate([render(props_list[i:i + _CHUNK], seeds[i:i + _CHUNK], resolution)
                               for i in range(0, n, _CHUNK)])
    res = int(resolution)
    full = [complete_properties(p, s) for p, s in zip(props_list, seeds)]
    rngs = [np.random.default_rng([int(s), 104729]) for s in seeds]

    # per-image scalars and noise fields, drawn image by image so batches don't change them
    centre = np.empty((n, 2), np.float32)
    angle = np.empty(n, np.float32)
    noise = np.empty((n, res, res), np.float32)
    clutter_xy = np.empty((n, _MAX_CLUTTER, 2), np.float32)
    clutter_r = np.empty((n, _MAX_CLUTTER), np.float32)
    clutter_rgb = np.empty((n, _MAX_CLUTTER, 3), np.float32)
    jitter = np.empty((n, 3), np.float32)
    for i, rng in enumerate(rngs):
        radius = _SIZES[full[i]["size"]]
        margin = radius + 0.04
        centre[i] = rng.uniform(margin, 1 - margin, 2)
        angle[i] = rng.uniform(0, 2 * np.pi)
        noise[i] = rng.standard_normal((res, res), dtype=np.float32)
        clutter_xy[i] = rng.uniform(0, 1, (_MAX_CLUTTER, 2))
        clutter_r[i] = rng.uniform(0.04, 0.09, _MAX_CLUTTER)
        clutter_rgb[i] = rng.uniform(0, 1, (_MAX_CLUTTER, 3))
        jitter[i] = rng.normal(0, 0.04, 3)

    grid = (np.arange(res, dtype=np.float32) + 0.5) / res
    ys, xs = np.meshgrid(grid, grid, indexing="ij")  # (H, W)

    # background: base colour + texture (stripes for grass, waves for water, mortar for brick)
    img = np.empty((n, res, res, 3), np.float32)
    for name, (rgb, amp) in _BACKGROUNDS.items():
        idx = np.array([i for i in range(n) if full[i]["background"] == name], dtype=np.int64)
        if idx.size == 0:
            continue
        tex = amp * noise[idx]
        if name == "grass":
            tex = tex + 0.08 * np.sin(xs * 60.0)[None]
        elif name == "water":
            tex = tex * 0.4 + 0.10 * np.sin(ys * 40.0 + 3.0 * np.sin(xs * 8.0))[None]
        elif name == "brick":
            mortar = ((ys * 8) % 1 < 0.12) | (((xs * 4 + 0.5 * (np.floor(ys * 8) % 2)) % 1) < 0.06)
            tex = tex * 0.5 + np.where(mortar, 0.25, 0.0)[None]
        img[idx] = np.asarray(rgb, np.float32)[None, None, None] + tex[..., None]

    # clutter: small discs of random colour; slot k is drawn when k < count for the image
    counts = np.array([_CLUTTER[f["clutter"]] for f in full])
    for k in range(_MAX_CLUTTER):
        active = np.nonzero(counts > k)[0]
        if active.size == 0:
            continue
        dx = xs[None] - clutter_xy[active, k, 0, None, None]
        dy = ys[None] - clutter_xy[active, k, 1, None, None]
        disc = (dx * dx + dy * dy) < (clutter_r[active, k] ** 2)[:, None, None]
        img[active] = np.where(disc[..., None], clutter_rgb[active, k][:, None, None, :], img[active])

    # the object: a coloured shape with a dark outline, one vectorised pass per shape
    for shape in VOCABULARY["class"]:
        idx = np.array([i for i in range(n) if full[i]["class"] == shape], dtype=np.int64)
        if idx.size == 0:
            continue
        dx = xs[None] - centre[idx, 0, None, None]
        dy = ys[None] - centre[idx, 1, None, None]
        c, s = np.cos(angle[idx])[:, None, None], np.sin(angle[idx])[:, None, None]
        u, v = c * dx + s * dy, -s * dx + c * dy
        r = np.array([_SIZES[full[i]["size"]] for i in idx], np.float32)[:, None, None]
        outer = _shape_mask(shape, u / 1.12, v / 1.12, r)
        inner = _shape_mask(shape, u, v, r)
        colour = np.array([_COLOURS[full[i]["colour"]] for i in idx], np.float32) + jitter[idx]
        fill = colour[:, None, None, :] + 0.04 * noise[idx][..., None]
        sub = np.where(outer[..., None], np.float32(0.08), img[idx])
        img[idx] = np.where(inner[..., None], fill, sub)

    # lighting: a global colour transform, plus sensor noise in the dark
    for name in VOCABULARY["lighting"]:
        idx = np.array([i for i in range(n) if full[i]["lighting"] == name], dtype=np.int64)
        if idx.size == 0 or name == "day":
            continue
        sub = img[idx]
        if name == "dusk":
            sub = sub * np.array([0.85, 0.62, 0.50], np.float32) + np.array([0.08, 0.02, 0.0], np.float32)
        elif name == "night":
            sub = sub * np.array([0.22, 0.26, 0.42], np.float32) + 0.05 * np.roll(noise[idx], 7, axis=1)[..., None]
        elif name == "fog":
            sub = 0.45 * sub + 0.55 * np.array([0.75, 0.77, 0.80], np.float32)
        img[idx] = sub
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_prompts(prompts: Sequence[str], seeds: Sequence[int], resolution: int = DEFAULT_RESOLUTION) -> np.ndarray:
    """Render what each prompt says; properties it does not name vary with the seed."""
    return render([parse_prompt(p) for p in prompts], seeds, resolution)


def sample_properties(n: int, rng: np.random.Generator, fixed: Mapping[str, Iterable[str]] | None = None
                      ) -> list[dict[str, str]]:
    """n property dicts drawn uniformly over the world (or over ``fixed`` value lists)."""
    fixed = dict(fixed or {})
    out: list[dict[str, str]] = []
    columns = {}
    for prop in PROPERTIES:
        values = list(fixed.get(prop, VOCABULARY[prop]))
        columns[prop] = [values[i] for i in rng.integers(0, len(values), n)]
    for i in range(n):
        out.append({prop: columns[prop][i] for prop in PROPERTIES})
    return out


def resolution_in(generator_options: Mapping) -> int:
    """The image size a toyworld generator with these options draws: the toy models train at it."""
    return int(generator_options.get("resolution") or DEFAULT_RESOLUTION)
