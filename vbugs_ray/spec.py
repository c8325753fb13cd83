"""AuditSpec: YAML in, validated dataclasses out.

Every mistake raises ``SpecError`` whose message names the field (``classifier.backend``,
``axes.lighting``...) and says what is allowed, so the CLI can print it on one line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

ROLES = ("generator", "classifier", "embedder", "captioner")
SAMPLING_RULES = ("balanced", "random")
EXECUTORS = ("ray", "local")
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


class SpecError(ValueError):
    """A spec mistake; ``str()`` is one line naming the field."""

    def __init__(self, field_path: str, message: str):
        self.field, self.message = field_path, message
        super().__init__(f"spec field '{field_path}': {message}")

    def __reduce__(self):  # picklable, so an error raised in a Ray actor reaches the driver intact
        return (SpecError, (self.field, self.message))


def _check_keys(data: Any, allowed: tuple[str, ...], where: str, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(data, Mapping):
        raise SpecError(where or "<top>", f"expected a mapping with keys {', '.join(allowed)}; got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise SpecError(_join(where, str(key)), f"unknown key; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in data or data[key] is None:
            raise SpecError(_join(where, key), "is required")
    return dict(data)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _number(value: Any, where: str, kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise SpecError(where, f"expected {'an integer' if kind is int else 'a number'}; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise SpecError(where, f"must be {'>' if low_open else '>='} {low}; got {value!r}")
    if high is not None and value > high:
        raise SpecError(where, f"must be <= {high}; got {value!r}")
    return kind(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(where, f"expected a non-empty string; got {value!r}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SpecError(where, "expected a non-empty list of strings")
    out = [_string(v, f"{where}[{i}]") for i, v in enumerate(value)]
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise SpecError(where, f"duplicate values {dupes}")
    return out


@dataclass(frozen=True)
class Axis:
    """One shift axis: its values and the words each value puts in the prompt."""

    name: str
    values: tuple[str, ...]
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class RoleSpec:
    """Which backend plays a role, its options, and the resources its actors ask for."""

    backend: str
    options: dict = field(default_factory=dict)
    batch_size: int = 256
    concurrency: int = 1
    num_cpus: float = 0.25
    num_gpus: float = 0.0
    device: str = "auto"
    dtype: str = "float32"

    FIELDS = ("backend", "options", "batch_size", "concurrency", "num_cpus", "num_gpus", "device", "dtype")


@dataclass(frozen=True)
class SearchSpec:
    """Slice-search settings (see vbugs_ray.slices)."""

    alpha: float = 0.05
    min_support: int = 20
    max_order: int = 3
    min_effect: float = 0.2
    top_k: int = 10
    fdr: str = "bh"
    prune: str = "auto"
    expand_alpha: float = 0.1

    FIELDS = ("alpha", "min_support", "max_order", "min_effect", "top_k", "fdr", "prune", "expand_alpha")


@dataclass(frozen=True)
class FilterSpec:
    """The CLIP filter (Dataset Interfaces): a generated image must look like its class (and its
    shift) to the embedder, or its row is kept but marked invalid and left out of slice statistics.
    Each criterion is optional; similarities are cosines in the embedder's space."""

    class_prompt: str = "a photo of a {class}"
    shift_prompt: str = "a photo {phrase}"
    min_class_similarity: float | None = None
    class_top_k: int | None = None
    min_shift_similarity: float | None = None

    FIELDS = ("class_prompt", "shift_prompt", "min_class_similarity", "class_top_k", "min_shift_similarity")


@dataclass(frozen=True)
class RunSpec:
    """How the audit executes: Ray or in-process, shard size, local Ray resources."""

    executor: str = "ray"
    shard_rows: int = 4096
    ray_address: str | None = None
    ray_num_cpus: int | None = None

    FIELDS = ("executor", "shard_rows", "ray_address", "ray_num_cpus")


@dataclass(frozen=True)
class AuditSpec:
    name: str
    classes: tuple[str, ...]
    class_phrases: tuple[str, ...]  # the words {class} becomes in a prompt (a learned token...)
    axes: tuple[Axis, ...]
    prompt: str
    images_per_cell: int | None
    budget: int | None
    sampling: str
    seed: int
    generator: RoleSpec
    classifier: RoleSpec
    embedder: RoleSpec
    captioner: RoleSpec | None
    filter: FilterSpec | None
    search: SearchSpec
    run: RunSpec
    output_dir: str

    TOP_FIELDS = ("name", "classes", "axes", "prompt", "images_per_cell", "budget", "sampling", "seed",
                  "generator", "classifier", "embedder", "captioner", "filter", "search", "run", "output_dir")

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    def to_dict(self) -> dict:
        """Plain data, with axes as name -> {value: phrase}, suitable for JSON and hashing."""
        data = dataclasses.asdict(self)
        data["axes"] = {a.name: dict(zip(a.values, a.phrases)) for a in self.axes}
        phrases = data.pop("class_phrases")
        if phrases != data["classes"]:
            data["classes"] = dict(zip(data["classes"], phrases))
        return json.loads(json.dumps(data))  # tuples -> lists: parse_spec(to_dict()) round-trips


def _parse_axes(data: Any) -> tuple[Axis, ...]:
    if not isinstance(data, Mapping) or not data:
        raise SpecError("axes", "expected a mapping axis -> list of values (or value -> prompt phrase)")
    axes = []
    for name, values in data.items():
        where = f"axes.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SpecError(where, "axis names must be identifiers (letters, digits, _)")
        if name in ("class", "seed", "prompt", "row_id", "cell"):
            raise SpecError(where, f"'{name}' is reserved; rename the axis")
        if isinstance(values, Mapping):
            if not values:
                raise SpecError(where, "axis has no values; list at least one")
            vals = _string_list([str(v) for v in values], where)
            phrases = [_string(p, f"{where}.{v}") for v, p in values.items()]
        else:
            if not isinstance(values, list) or not values:
                raise SpecError(where, "axis has no values; list at least one")
            vals = _string_list([str(v) if isinstance(v, (int, float)) else v for v in values], where)
            phrases = vals
        axes.append(Axis(name, tuple(vals), tuple(phrases)))
    return tuple(axes)


def _parse_classes(data: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A list of class names, or a mapping name -> the words the prompt uses for it (for learned
    tokens: ``tench: "<tench>"``); names are what the classifier's labels and the report use."""
    if isinstance(data, Mapping):
        if not data:
            raise SpecError("classes", "expected a non-empty list of class names (or name -> prompt words)")
        names = _string_list([str(k) for k in data], "classes")
        return tuple(names), tuple(_string(v, f"classes.{k}") for k, v in data.items())
    names = tuple(_string_list(data, "classes"))
    return names, names


def _parse_role(role: str, data: Any, known_backends: Mapping[str, Any]) -> RoleSpec:
    if isinstance(data, str):
        data = {"backend": data}
    raw = _check_keys(data, RoleSpec.FIELDS, role, required=("backend",))
    backend = _string(raw["backend"], f"{role}.backend")
    if backend not in known_backends:
        raise SpecError(f"{role}.backend", f"unknown backend '{backend}'; known: {', '.join(sorted(known_backends))}")
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise SpecError(f"{role}.options", "expected a mapping of backend options")
    spec = RoleSpec(
        backend=backend,
        options=dict(options),
        batch_size=_number(raw.get("batch_size", 256), f"{role}.batch_size", int, 1),
        concurrency=_number(raw.get("concurrency", 1), f"{role}.concurrency", int, 1),
        num_cpus=_number(raw.get("num_cpus", 0.25), f"{role}.num_cpus", float, 0, low_open=True),
        num_gpus=_number(raw.get("num_gpus", 0.0), f"{role}.num_gpus", float, 0),
        device=_string(raw.get("device", "auto"), f"{role}.device"),
        dtype=DTYPE_NAMES.get(raw.get("dtype", "float32"), ""),
    )
    if not spec.dtype:
        raise SpecError(f"{role}.dtype", f"expected float32, float16 or bfloat16 (fp32, fp16, bf16); got {raw.get('dtype')!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", spec.device):
        raise SpecError(f"{role}.device", f"expected auto, cpu, cuda or cuda:N; got {spec.device!r}")
    return spec


def parse_search(data: Any) -> SearchSpec:
    raw = _check_keys(data or {}, SearchSpec.FIELDS, "search")
    d = SearchSpec()
    fdr = raw.get("fdr", d.fdr)
    if fdr not in ("bh", "alpha_investing"):
        raise SpecError("search.fdr", f"unknown procedure {fdr!r}; allowed: bh, alpha_investing")
    prune = raw.get("prune", d.prune)
    if prune not in ("auto", "elevated", "exact", "none"):
        raise SpecError("search.prune", f"unknown mode {prune!r}; allowed: auto (default), elevated, exact, none")
    return SearchSpec(
        alpha=_number(raw.get("alpha", d.alpha), "search.alpha", float, 0, 1, low_open=True),
        min_support=_number(raw.get("min_support", d.min_support), "search.min_support", int, 1),
        max_order=_number(raw.get("max_order", d.max_order), "search.max_order", int, 1, 5),
        min_effect=_number(raw.get("min_effect", d.min_effect), "search.min_effect", float, 0),
        top_k=_number(raw.get("top_k", d.top_k), "search.top_k", int, 1),
        fdr=fdr,
        prune=prune,
        expand_alpha=_number(raw.get("expand_alpha", d.expand_alpha), "search.expand_alpha", float, 0, 1, low_open=True),
    )


def _parse_filter(data: Any, n_classes: int) -> FilterSpec | None:
    if data is None:
        return None
    raw = _check_keys(data, FilterSpec.FIELDS, "filter")
    d = FilterSpec()
    class_prompt = _string(raw.get("class_prompt", d.class_prompt), "filter.class_prompt")
    shift_prompt = _string(raw.get("shift_prompt", d.shift_prompt), "filter.shift_prompt")
    if "{class}" not in class_prompt:
        raise SpecError("filter.class_prompt", f"must contain {{class}}; got {class_prompt!r}")
    if "{phrase}" not in shift_prompt:
        raise SpecError("filter.shift_prompt", f"must contain {{phrase}} (an axis value's words); got {shift_prompt!r}")
    limits = {}
    for key in ("min_class_similarity", "min_shift_similarity"):
        value = raw.get(key)
        limits[key] = None if value is None else _number(value, f"filter.{key}", float, -1, 1)
    top_k = raw.get("class_top_k")
    top_k = None if top_k is None else _number(top_k, "filter.class_top_k", int, 1, n_classes)
    if top_k is None and all(v is None for v in limits.values()):
        raise SpecError("filter", "sets no criterion; give min_class_similarity, class_top_k or min_shift_similarity")
    return FilterSpec(class_prompt, shift_prompt, limits["min_class_similarity"], top_k, limits["min_shift_similarity"])


def _parse_run(data: Any) -> RunSpec:
    raw = _check_keys(data or {}, RunSpec.FIELDS, "run")
    d = RunSpec()
    executor = raw.get("executor", d.executor)
    if executor not in EXECUTORS:
        raise SpecError("run.executor", f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    num_cpus = raw.get("ray_num_cpus")
    return RunSpec(
        executor=executor,
        shard_rows=_number(raw.get("shard_rows", d.shard_rows), "run.shard_rows", int, 1),
        ray_address=raw.get("ray_address"),
        ray_num_cpus=None if num_cpus is None else _number(num_cpus, "run.ray_num_cpus", int, 1),
    )


def _check_prompt(template: str, classes: tuple[str, ...], axes: tuple[Axis, ...]) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise SpecError("prompt", f"not a valid template ({exc}); use {{class}} and {{axis}} placeholders")
    allowed = {"class"} | {a.name for a in axes}
    unknown = sorted(names - allowed)
    if unknown:
        raise SpecError("prompt", f"placeholder {{{unknown[0]}}} is neither 'class' nor an axis; allowed: {sorted(allowed)}")
    missing = [n for n in ["class", *[a.name for a in axes]] if n not in names]
    if missing:
        raise SpecError("prompt", f"template does not mention {{{missing[0]}}}; every axis and the class must be in the prompt")


def parse_spec(data: Any, source: str = "<spec>") -> AuditSpec:
    """Validate a spec mapping (as loaded from YAML) into an AuditSpec."""
    from vbugs_ray.roles import registry  # roles import spec types; import here to avoid a cycle

    raw = _check_keys(data, AuditSpec.TOP_FIELDS, "", required=("classes", "axes", "prompt"))
    classes, class_phrases = _parse_classes(raw["classes"])
    axes = _parse_axes(raw["axes"])
    prompt = _string(raw["prompt"], "prompt")
    _check_prompt(prompt, classes, axes)

    per_cell, budget = raw.get("images_per_cell"), raw.get("budget")
    if per_cell is None and budget is None:
        per_cell = 10
    if per_cell is not None and budget is not None:
        raise SpecError("budget", "give either images_per_cell or budget, not both")
    if per_cell is not None:
        per_cell = _number(per_cell, "images_per_cell", int, 0, low_open=True)
    if budget is not None:
        budget = _number(budget, "budget", int, 0, low_open=True)
    sampling = raw.get("sampling", "balanced")
    if sampling not in SAMPLING_RULES:
        raise SpecError("sampling", f"unknown rule {sampling!r}; allowed: {', '.join(SAMPLING_RULES)}")

    roles = {}
    for role in ROLES:
        value = raw.get(role)
        if value is None:
            if role == "captioner":
                roles[role] = None
                continue
            raise SpecError(role, f"is required: name a backend ({', '.join(sorted(registry.backends(role)))})")
        roles[role] = _parse_role(role, value, registry.backends(role))

    spec = AuditSpec(
        name=_string(raw.get("name", Path(source).stem if source != "<spec>" else "audit"), "name"),
        classes=classes,
        class_phrases=class_phrases,
        axes=axes,
        prompt=prompt,
        images_per_cell=per_cell,
        budget=budget,
        sampling=sampling,
        seed=_number(raw.get("seed", 0), "seed", int, 0),
        filter=_parse_filter(raw.get("filter"), len(classes)),
        search=parse_search(raw.get("search")),
        run=_parse_run(raw.get("run")),
        output_dir=_string(raw.get("output_dir", "runs/audit"), "output_dir"),
        **roles,
    )
    for role in ROLES:
        role_spec = getattr(spec, role)
        if role_spec is None:
            continue
        if (spec.run.executor == "ray" and role != "captioner" and role_spec.device.startswith("cuda")
                and role_spec.num_gpus == 0):
            raise SpecError(f"{role}.num_gpus", f"device {role_spec.device} needs num_gpus > 0 (fractions allowed) "
                            f"so that Ray places the actor on a GPU; or set device: auto")
        registry.validate(role, role_spec, spec)
    return spec


def load_spec(path: str | Path) -> AuditSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("<file>", f"no spec file at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError("<file>", f"{path} is not valid YAML{where}") from None
    return parse_spec(data, source=str(path))


DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "jobs" / "toyworld.yaml"
