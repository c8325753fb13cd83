"""`vbugs`: the command line. Mistakes in input end in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vbugs_ray.spec import DEFAULT_SPEC, SpecError, load_spec
from vbugs_ray.store import RunStoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vbugs", description="Audit image classifiers for failure slices on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="run a whole audit: generate, score, embed, search slices")
    audit.add_argument("spec", nargs="?", default=None, help=f"audit spec YAML (default: {DEFAULT_SPEC.name}, the toy world)")
    audit.add_argument("--out", default=None, help="run directory (default: the spec's output_dir)")
    audit.add_argument("--executor", choices=("ray", "local"), default=None, help="override run.executor")
    audit.add_argument("--top", type=int, default=10, help="flagged slices to print")

    slices = sub.add_parser("slices", help="re-run only the slice search on an existing run directory")
    slices.add_argument("run_dir")
    slices.add_argument("--alpha", type=float, default=None, help="override search.alpha")
    slices.add_argument("--min-support", type=int, default=None, help="override search.min_support")
    slices.add_argument("--min-effect", type=float, default=None, help="override search.min_effect")
    slices.add_argument("--top", type=int, default=10, help="flagged slices to print")

    validate = sub.add_parser("validate", help="check a spec and print its grid size")
    validate.add_argument("spec")
    return parser


def _audit(args) -> int:
    import dataclasses

    from vbugs_ray.audit import audit
    from vbugs_ray.report import format_slices

    spec = load_spec(args.spec or DEFAULT_SPEC)
    if args.executor:
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, executor=args.executor))
    report = audit(spec, args.out)
    print(format_slices(report, args.top))
    return 0


def _slices(args) -> int:
    import dataclasses

    from vbugs_ray.audit import find_slices
    from vbugs_ray.report import format_slices
    from vbugs_ray.spec import parse_search
    from vbugs_ray.store import RunStore

    spec_dict = RunStore(args.run_dir).load_spec_dict()
    overrides = {"alpha": args.alpha, "min_support": args.min_support, "min_effect": args.min_effect}
    raw_search = dict(spec_dict["search"], **{k: v for k, v in overrides.items() if v is not None})
    spec_dict["search"] = dataclasses.asdict(parse_search(raw_search))  # same checks as a spec file
    report = find_slices(args.run_dir, spec_dict)
    print(format_slices(report, args.top))
    return 0


def _validate(args) -> int:
    from vbugs_ray.grid import build_grid, n_cells

    spec = load_spec(args.spec)
    grid = build_grid(spec)
    print(json.dumps({"name": spec.name, "cells": n_cells(spec), "rows": grid.num_rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"audit": _audit, "slices": _slices, "validate": _validate}[args.command](args)
    except (SpecError, RunStoreError) as exc:
        print(f"vbugs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vbugs: interrupted; finished shards are kept, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
