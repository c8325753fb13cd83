"""One registry per role: backends are built by name from the spec, like timm's create_model.

Entries are import paths, so naming a heavy backend (diffusers...) costs nothing until it is used.
A backend class (see roles.protocols for what each role must provide) has:
- ``Options``: a dataclass declaring its options (vbugs_ray.fields), parsed once from the spec's
  ``options`` mapping: unknown keys, types and bounds are checked there;
- ``check(options, spec)`` (classmethod, optional): what the declaration cannot say (a model
  name, a file, agreement with other parts of the spec), at validation time;
- ``prepare(options, spec, progress)`` (classmethod, optional): one-time driver-side work
  (training, reading files) before any actor starts, so that actors only load; it returns the
  files under vbugs_ray's cache the actors need (shipped to every node: vbugs_ray.shipping);
- ``__init__(options, role_spec, spec)``: load the model (once per actor); a captioner also
  receives ``embedder``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import parse_options
from vbugs_ray.spec import AuditSpec, RoleSpec

_BACKENDS: dict[str, dict[str, str]] = {
    "generator": {
        "toyworld": "vbugs_ray.roles.generators.toyworld:ToyWorldGenerator",
        "diffusers": "vbugs_ray.roles.generators.diffusers:DiffusersGenerator",
        "dataset": "vbugs_ray.roles.generators.dataset:DatasetGenerator",
        "corruptions": "vbugs_ray.roles.generators.corruptions:CorruptionsGenerator",
    },
    "classifier": {
        "toyworld_cnn": "vbugs_ray.roles.classifiers.toyworld_cnn:ToyWorldClassifier",
        "timm": "vbugs_ray.roles.classifiers.timm:TimmClassifier",
        "torchvision": "vbugs_ray.roles.classifiers.torchvision:TorchvisionClassifier",
        "module": "vbugs_ray.roles.classifiers.module:ModuleClassifier",
        "data_cnn": "vbugs_ray.roles.classifiers.data_cnn:DataCNNClassifier",
    },
    "embedder": {
        "toyworld_clip": "vbugs_ray.roles.embedders.toyworld_clip:ToyWorldCLIPEmbedder",
        "open_clip": "vbugs_ray.roles.embedders.open_clip:OpenCLIPEmbedder",
        "data_clip": "vbugs_ray.roles.embedders.data_clip:DataCLIPEmbedder",
    },
    "captioner": {
        "retrieval": "vbugs_ray.roles.captioners.retrieval:RetrievalCaptioner",
        "transformers": "vbugs_ray.roles.captioners.transformers:TransformersCaptioner",
    },
}


_BUILT_IN = {role: dict(names) for role, names in _BACKENDS.items()}


def register(role: str, name: str, target: str | type) -> None:
    """Add a backend: ``target`` is 'module:Class' or the class itself (then by its import path:
    Ray's workers import it by name, so it must live in a module they can import, not in a script
    run as ``__main__``). ``added()`` lists what was added, for stages built in other processes."""
    if role not in _BACKENDS:
        raise SpecError("register_backend", f"unknown role {role!r}; roles: {', '.join(_BACKENDS)}")
    if isinstance(target, type):
        if target.__module__ == "__main__" or "<locals>" in target.__qualname__:
            raise SpecError("register_backend", f"{target.__qualname__} must be defined at the top of an importable "
                            "module (Ray's workers import it by name), not in __main__ or a function")
        target = f"{target.__module__}:{target.__qualname__}"
    if not isinstance(target, str) or ":" not in target:
        raise SpecError("register_backend", f"expected a class or 'module:Class'; got {target!r}")
    _BACKENDS[role][name] = target


def added() -> dict[str, dict[str, str]]:
    """The backends registered in this process beyond the built-in ones (shipped to Ray actors)."""
    return {role: {n: t for n, t in names.items() if _BUILT_IN[role].get(n) != t}
            for role, names in _BACKENDS.items() if any(_BUILT_IN[role].get(n) != t for n, t in names.items())}


def adopt(backends: dict[str, dict[str, str]] | None) -> None:
    """Register what another process ``added()`` (a stage built in a Ray actor)."""
    for role, names in (backends or {}).items():
        for name, target in names.items():
            register(role, name, target)


def backends(role: str) -> dict[str, str]:
    return dict(_BACKENDS[role])


def backend_class(role: str, name: str) -> type:
    if name not in _BACKENDS[role]:
        raise SpecError(f"{role}.backend", f"unknown backend '{name}'; known: {', '.join(sorted(_BACKENDS[role]))}")
    module, _, attr = _BACKENDS[role][name].partition(":")
    found: Any = importlib.import_module(module)
    for part in attr.split("."):
        found = getattr(found, part)
    return found


def options_of(role: str, role_spec: RoleSpec) -> Any:
    """The backend's declared options, parsed from the spec's mapping."""
    cls = backend_class(role, role_spec.backend)
    return parse_options(cls.Options, role_spec.options, f"{role}.options", noun="option")


def validate_backends(spec: AuditSpec) -> AuditSpec:
    """Every role's backend exists, and its options parse and pass the backend's own checks;
    returns the spec, so that ``validate_backends(parse_spec(data))`` reads as one step, with
    ``axes: auto`` resolved (``resolve_axes``): use the spec it returns."""
    spec = resolve_axes(spec)
    for role, role_spec in spec.roles().items():
        cls = backend_class(role, role_spec.backend)
        options = options_of(role, role_spec)
        if hasattr(cls, "check"):
            cls.check(options, spec)
    return spec


def resolve_axes(spec: AuditSpec) -> AuditSpec:
    """``axes: auto`` made concrete: the generator (one that reads a dataset) lists the axes its
    metadata holds, and each is appended to the prompt; any other spec is returned as it is."""
    if not spec.axes_auto:
        return spec
    cls = backend_class("generator", spec.generator.backend)
    if not hasattr(cls, "axes_from_data"):
        raise SpecError("axes", f"auto needs a generator that reads a dataset (dataset); {spec.generator.backend} "
                                "draws its images: list each axis and its values")
    axes = tuple(cls.axes_from_data(options_of("generator", spec.generator), spec))
    prompt = spec.prompt + "".join(f", {{{axis.name}}}" for axis in axes)
    return dataclasses.replace(spec, axes=axes, prompt=prompt, axes_auto=False, axes_from_data=True)


def prepare(role: str, role_spec: RoleSpec, spec: AuditSpec, progress: Callable[[str], None] = print) -> list:
    """The backend's driver-side preparation; returns the cache files its actors need."""
    cls = backend_class(role, role_spec.backend)
    if hasattr(cls, "prepare"):
        return list(cls.prepare(options_of(role, role_spec), spec, progress) or [])
    return []


def prepare_all(spec: AuditSpec, progress: Callable[[str], None] = print, roles=None) -> list:
    """``prepare`` for each pipeline role (or ``roles``); the cache files their actors need."""
    from vbugs_ray.spec import PIPELINE_ROLES

    return [path for role in (roles or PIPELINE_ROLES) if getattr(spec, role) is not None
            for path in prepare(role, getattr(spec, role), spec, progress)]


def create(role: str, role_spec: RoleSpec, spec: AuditSpec, **needs: Any) -> Any:
    """Build the role's backend (in the calling process: an actor, or the driver)."""
    return backend_class(role, role_spec.backend)(options_of(role, role_spec), role_spec, spec, **needs)
