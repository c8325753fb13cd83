"""`vbugs sweep SWEEP.yaml`: one grid of images, several classifiers. The images are generated,
filtered and embedded once, in the first classifier's run; every other classifier scores the same
stored images (``pipeline.RescoreStage``: no generator, no embedder) into a run directory of its
own. Each run gets its slice search (and verification, when the audit spec asks for it), and the
sweep ends with a comparison (``compare``): which failures all models share and which belong to
one (Wiles et al. saw failures transfer only partly between architectures).

A sweep file::

    name: toyworld-sweep
    audit: toyworld.yaml            # the audit spec: a path (relative to this file) or a mapping
    classifiers:                    # name -> the classifier role, as in an audit spec
      small_cnn: {backend: toyworld_cnn, options: {...}}
      resnet18: {backend: timm, options: {model: resnet18}}
    output_dir: runs/sweep          # one run directory per classifier under it
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vbugs_ray.atomic import atomic_write_json, check_output
from vbugs_ray.errors import SpecError
from vbugs_ray.spec import AuditSpec, load_spec_data, parse_spec

Progress = Callable[[str], None]
FIELDS = ("name", "audit", "classifiers", "output_dir")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a classifier's name is its run directory's


@dataclass(frozen=True)
class Sweep:
    name: str
    audits: dict[str, AuditSpec]  # classifier name -> the audit spec with that classifier
    output_dir: str


def parse_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; each classifier's audit spec is checked as an audit's."""
    path = Path(path)
    data = load_spec_data(path)
    if not isinstance(data, dict):
        raise SpecError("<top>", f"a sweep file is a mapping with keys {', '.join(FIELDS)}")
    for key in data:
        if key not in FIELDS:
            raise SpecError(str(key), f"unknown key in a sweep file; allowed: {', '.join(FIELDS)}")
    for key in ("audit", "classifiers"):
        if key not in data:
            raise SpecError(key, "is required in a sweep file")
    audit = data["audit"]
    if isinstance(audit, str):
        audit = load_spec_data(path.parent / audit)
    if not isinstance(audit, dict):
        raise SpecError("audit", "give the audit spec's path (relative to the sweep file) or the spec itself")
    classifiers = data["classifiers"]
    if not isinstance(classifiers, dict) or len(classifiers) < 2:
        raise SpecError("classifiers", "give at least two: name -> classifier role (as in an audit spec)")
    name = data.get("name", path.stem)
    audits = {}
    for label, role in classifiers.items():
        if not isinstance(label, str) or not NAME.fullmatch(label):
            raise SpecError(f"classifiers.{label}", "a name of letters, digits, '_', '.', '-' (it names a folder)")
        spec = copy.deepcopy(audit)
        spec["classifier"] = role
        spec["name"] = f"{name}-{label}"
        try:
            audits[label] = parse_spec(spec, source=str(path))
        except SpecError as exc:
            field = exc.field.replace("classifier", f"classifiers.{label}", 1) if exc.field.startswith(
                "classifier") else exc.field
            raise SpecError(field, exc.message) from None
    return Sweep(name=str(name), audits=audits, output_dir=str(data.get("output_dir", f"runs/{name}")))


def run_sweep(sweep: Sweep, out: str | Path | None = None, progress: Progress = print) -> dict:
    """Every classifier's run (the first generates, the others rescore its images), their slice
    searches and verifications, and the comparison, written to OUT/comparison.json."""
    from vbugs_ray.compare import compare
    from vbugs_ray.flow import find_slices, generate_rows, rescore_rows, verify_run
    from vbugs_ray.pipeline import actor_needs
    from vbugs_ray.raycluster import ray_session
    from vbugs_ray.roles.registry import validate_backends

    root = check_output(out or sweep.output_dir, "--out" if out else "sweep field 'output_dir':", folder=True)
    for spec in sweep.audits.values():
        validate_backends(spec)  # every classifier's mistake before any image is drawn
    names = list(sweep.audits)
    first = sweep.audits[names[0]]
    reports = {}
    session = ray_session(first.run, progress, actor_needs(first)) if first.run.executor == "ray" \
        else contextlib.nullcontext()
    with session:
        progress(f"sweep {sweep.name}: {names[0]} generates, filters and embeds the images; "
                 f"{', '.join(names[1:])} score the same images")
        source = generate_rows(first, root / names[0], progress)
        for name in names[1:]:
            rescore_rows(source, sweep.audits[name], root / name, progress)
        for name, spec in sweep.audits.items():
            progress(f"sweep: {name}")
            reports[name] = find_slices(root / name, spec.to_dict(), progress)
            if spec.verify is not None:
                reports[name] = verify_run(root / name, spec.to_dict(), progress)
    result = compare({name: root / name for name in names}, reports, first)
    atomic_write_json(root / "comparison.json", result)
    progress(f"sweep: comparison of {len(names)} classifiers -> {root / 'comparison.json'}")
    return result
