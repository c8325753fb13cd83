"""`vbugs`: the command line. Mistakes in input end in one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys

from vbugs_ray import signals
from vbugs_ray.atomic import check_output
from vbugs_ray.errors import USER_ERRORS, SpecError, TokenError, UsageError
from vbugs_ray.fields import check_field, check_seed
from vbugs_ray.jsontext import to_json
from vbugs_ray.slices.settings import FDR_PROCEDURES, PRUNE_MODES, SearchSettings
from vbugs_ray.spec import DEFAULT_SPEC, load_spec
from vbugs_ray.terminal import VERBOSE_ENV
from vbugs_ray.terminal import stderr as _log


def _verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show Ray's own output (its INFO logs, workers' logs, Ray Data's progress)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vbugs", description="Audit image classifiers for failure slices on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="run a whole audit: generate, score, embed, search slices, verify bugs")
    audit.add_argument("spec", nargs="?", default=None, help=f"audit spec YAML (default: {DEFAULT_SPEC.name}, the toy world)")
    audit.add_argument("--out", default=None, help="run directory (default: the spec's output_dir)")
    audit.add_argument("--executor", choices=("ray", "local"), default=None, help="override run.executor")
    audit.add_argument("--top", type=int, default=10, help="flagged slices to print")
    _verbose_flag(audit)

    slices = sub.add_parser("slices", help="slice search on a run directory, or on any Parquet table (--table)")
    slices.add_argument("run_dir", nargs="?", help="a finished audit's run directory")
    slices.add_argument("--caption", action="store_true",
                        help="with a run directory: also caption the top slices (loads the spec's captioner)")
    slices.add_argument("--partial", action="store_true",
                        help="with a run directory that has shards missing or damaged: search the whole shards "
                             "(the report says partial: true and how many rows are missing)")
    slices.add_argument("--table", help="any Parquet file or directory of Parquet files instead of a run")
    slices.add_argument("--error-col", default="error",
                        help="with --table: the error column, 0/1 or true/false (rows where it is missing are "
                             "left out), or text with --positive")
    slices.add_argument("--positive", default=None, metavar="VALUE",
                        help="with --table and a text --error-col of two values: the value that marks an error")
    slices.add_argument("--loss-col", default=None, help="with --table: an optional per-row loss column")
    slices.add_argument("--features", default=None, help="with --table: comma-separated columns (default: all others)")
    slices.add_argument("--out", default=None, help="with --table: where to write the JSON result")
    slices.add_argument("--max-order", type=int, default=None, help="override search.max_order (1-5)")
    slices.add_argument("--alpha", type=float, default=None, help="override search.alpha")
    slices.add_argument("--min-support", type=int, default=None, help="override search.min_support")
    slices.add_argument("--min-effect", type=float, default=None, help="override search.min_effect")
    slices.add_argument("--fdr", choices=FDR_PROCEDURES, default=None, help="override search.fdr")
    slices.add_argument("--prune", choices=PRUNE_MODES, default=None,
                        help="override search.prune (auto: elevated from a million rows, exact below; elevated: "
                             "follow failures, a few percent of the lattice; exact: every slice that could be "
                             "flagged; none: everything)")
    slices.add_argument("--top", type=int, default=10, help="flagged slices to print")
    _verbose_flag(slices)

    verify = sub.add_parser("verify", help="discover failure hypotheses on a finished run and verify them on fresh "
                                           "images (resumable)")
    verify.add_argument("run_dir", help="a finished audit's run directory")
    verify.add_argument("--top", type=int, default=10, help="verified bugs to print")
    _verbose_flag(verify)

    report = sub.add_parser("report", help="write RUN_DIR/report.html (one self-contained page) from a run's "
                                           "report.json; every audit writes it too")
    report.add_argument("run_dir", help="a run directory with a report.json")

    diagnose = sub.add_parser("diagnose", help="predicted loss of phrases, from the run's diagnosis ensemble")
    diagnose.add_argument("run_dir", help="a finished audit's run directory")
    diagnose.add_argument("phrases", nargs="+", help='descriptions, e.g. "a star in heavy clutter" "at night"')

    discover = sub.add_parser("discover", help="failure groups, failure directions and the diagnosis ensemble on "
                                               "any Parquet table of embeddings and errors")
    discover.add_argument("--table", required=True, help="a Parquet file or directory of Parquet files")
    discover.add_argument("--embedding-col", default="embedding", help="list-of-floats column (default: embedding)")
    discover.add_argument("--error-col", default="error", help="the 0/1 (or bool) error column (default: error)")
    discover.add_argument("--class-col", default="class", help="the true class column (default: class; '' for none)")
    discover.add_argument("--loss-col", default=None, help="a per-row loss column: fits the diagnosis ensembles")
    discover.add_argument("--pred-col", default=None, help="the predicted class column: each group's wrong predictions")
    discover.add_argument("--features", default=None, help="comma-separated columns each group is compared on")
    discover.add_argument("--with-rows", action="store_true", help="list each group's and direction's rows "
                                                                    "(positions in the table)")
    discover.add_argument("--seed", type=int, default=0)
    discover.add_argument("--out", default=None, help="also write the JSON result here")

    tokens = sub.add_parser("learn-tokens", help="learn a class token by textual inversion from a folder of images")
    tokens.add_argument("--model", required=True, help="SD 1.x/2.x pipeline: hub id or local folder")
    tokens.add_argument("--images", required=True, help="folder of the class's real images")
    tokens.add_argument("--token", required=True, help="the new word, e.g. '<tench>'")
    tokens.add_argument("--init-word", required=True, help="an existing word to start from, e.g. 'fish'")
    tokens.add_argument("--out", required=True, help="where to write the .safetensors embedding")
    tokens.add_argument("--steps", type=int, default=3000)
    tokens.add_argument("--lr", type=float, default=5e-4)
    tokens.add_argument("--weight-decay", type=float, default=1e-2)
    tokens.add_argument("--batch-size", type=int, default=1)
    tokens.add_argument("--resolution", type=int, default=None, help="default: the pipeline's image size")
    tokens.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                        help="default: fp16 on a GPU, no on a CPU")
    tokens.add_argument("--seed", type=int, default=0)

    submit = sub.add_parser("submit", help="submit `vbugs audit SPEC` as a Ray job to a cluster's job server")
    submit.add_argument("spec", nargs="?", default=None, help=f"audit spec YAML (default: {DEFAULT_SPEC.name})")
    submit.add_argument("--address", default=None, help="the job server, http://HEAD:8265 (default: "
                        "RAY_API_SERVER_ADDRESS, or an http RAY_ADDRESS)")
    submit.add_argument("--out", default=None, help="run directory on storage every node reaches (default: the "
                                                     "spec's output_dir)")
    submit.add_argument("--runtime-env", default=None, metavar="FILE",
                        help="YAML or JSON runtime env laid over the spec's run.runtime_env")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=0.0, help="CPUs reserved for the driver")
    submit.add_argument("--entrypoint-num-gpus", type=float, default=0.0, help="GPUs reserved for the driver")
    submit.add_argument("--submission-id", default=None, help="the job's id (default: Ray picks one)")
    submit.add_argument("--follow", action="store_true", help="then print the job's logs until it ends; the exit "
                                                               "status says whether it succeeded")
    for name, what in (("status", "a submitted job's status, as JSON"), ("logs", "a submitted job's logs"),
                       ("stop", "stop a submitted job (finished shards are kept: submit again to resume)")):
        job = sub.add_parser(name, help=what)
        job.add_argument("submission_id")
        job.add_argument("--address", default=None, help="the job server, http://HEAD:8265")
        if name == "logs":
            job.add_argument("--follow", action="store_true", help="until the job ends")

    sweep = sub.add_parser("sweep", help="one grid of images, several classifiers: generate once, audit each, compare")
    sweep.add_argument("sweep", help="sweep YAML (see jobs/sweep_toyworld.yaml)")
    sweep.add_argument("--out", default=None, help="folder for the runs (default: the sweep's output_dir)")
    sweep.add_argument("--top", type=int, default=15, help="rows of the comparison to print")
    _verbose_flag(sweep)

    validate = sub.add_parser("validate", help="check a spec and print its grid size")
    validate.add_argument("spec", nargs="?", default=None, help=f"audit spec YAML (default: {DEFAULT_SPEC.name})")
    return parser


def _audit(args) -> int:
    import dataclasses

    spec = load_spec(args.spec or DEFAULT_SPEC)
    if args.executor:
        spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, executor=args.executor))
    where = "--out" if args.out else "spec field 'output_dir':"
    run_dir = check_output(args.out or spec.output_dir, where, folder=True)  # before a minute of imports
    from vbugs_ray.flow import audit
    from vbugs_ray.report import format_bugs, format_slices

    report = audit(spec, run_dir)
    print(format_slices(report, args.top))
    if "verified_bugs" in report:
        print(format_bugs(report, args.top))
    return 0


def _verify(args) -> int:
    from vbugs_ray.flow import verify_run
    from vbugs_ray.report import format_bugs

    print(format_bugs(verify_run(args.run_dir), args.top))
    return 0


def _report(args) -> int:
    from pathlib import Path

    from vbugs_ray.webreport import write_html

    check_output(Path(args.run_dir) / "report.html", "RUN_DIR")  # a read-only run: say so before the work
    print(write_html(args.run_dir))
    return 0


def _submit(args) -> int:
    from vbugs_ray import submit

    for flag in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
        value = getattr(args, flag)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{flag.replace('_', '-')}: must be a number >= 0; got {value!r}")
    job = submit.submit(args.spec or str(DEFAULT_SPEC), args.address, args.out, args.runtime_env,
                        args.entrypoint_num_cpus, args.entrypoint_num_gpus, args.submission_id, progress=_log)
    print(job, flush=True)
    _log(f"submitted; follow it with `vbugs logs {job} --follow`, or see `vbugs status {job}`")
    return _follow(job, args.address) if args.follow else 0


def _follow(job: str, address: str | None) -> int:
    from vbugs_ray import submit

    final = submit.logs(job, address, follow=True)
    _log(f"job {job}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def _job_command(args) -> int:
    from vbugs_ray import submit

    if args.command == "status":
        print(to_json(submit.status(args.submission_id, args.address), indent=None))
    elif args.command == "stop":
        _log(f"job {args.submission_id}: " + ("stopping" if submit.stop(args.submission_id, args.address)
                                             else "already finished"))
    elif args.follow:
        return _follow(args.submission_id, args.address)
    else:
        submit.logs(args.submission_id, args.address)
    return 0


def _sweep(args) -> int:
    from vbugs_ray.compare import format_comparison
    from vbugs_ray.sweep import parse_sweep, run_sweep

    sweep = parse_sweep(args.sweep)
    print(format_comparison(run_sweep(sweep, args.out, progress=_log), args.top))
    return 0


def _diagnose(args) -> int:
    from vbugs_ray.spec import parse_spec
    from vbugs_ray.store import RunStore
    from vbugs_ray.verify.sources import diagnose_phrases

    store = RunStore(args.run_dir)
    spec = parse_spec(store.load_spec_dict(), source=str(store.spec_path))
    result = diagnose_phrases(store, spec, args.phrases, _log)
    print(to_json(result))
    return 0


def _seed_flag(seed: int, error: type[Exception]) -> None:
    """``--seed`` in the range every seed meets (numpy's and scikit-learn's), or ``error`` naming it."""
    try:
        check_seed(seed, "--seed")
    except SpecError as exc:
        raise error(f"--seed: {exc.message}") from None


def _discover(args) -> int:
    from vbugs_ray.discover_table import discover_table

    _seed_flag(args.seed, UsageError)
    result = discover_table(args.table, args.embedding_col, args.error_col, args.class_col or None, args.loss_col,
                            args.pred_col, args.features.split(",") if args.features else None, args.out,
                            args.seed, args.with_rows, progress=_log)
    print(to_json(result))
    return 0


def _search_overrides(args, base: dict) -> SearchSettings:
    """The search settings with the command line's overrides, each checked by the rule a spec
    file's value meets and refused under its flag's name (``--alpha nan``: not a number)."""
    overrides = {"alpha": args.alpha, "min_support": args.min_support, "min_effect": args.min_effect,
                 "max_order": args.max_order, "fdr": args.fdr, "prune": args.prune}
    given = {name: value for name, value in overrides.items() if value is not None}
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        try:
            check_field(SearchSettings, name, value, flag)
        except SpecError as exc:
            raise UsageError(f"{flag}: {exc.message}") from None
    return SearchSettings.parse(dict(base, **given))


def _slices(args) -> int:
    import dataclasses

    from vbugs_ray.report import format_slices

    if args.positive is not None and not args.table:
        raise SpecError("<command line>", "--positive goes with --table (it names the error value of a text column)")
    if args.partial and args.table:
        raise SpecError("<command line>", "--partial goes with a run directory (it searches a run's whole shards)")
    if args.table:
        from vbugs_ray.table import search_table

        report = search_table(args.table, args.error_col, args.loss_col,
                              args.features.split(",") if args.features else None,
                              _search_overrides(args, {}), args.out, progress=_log, positive=args.positive)
    elif args.run_dir:
        from vbugs_ray.flow import find_slices
        from vbugs_ray.store import RunStore

        spec_dict = RunStore(args.run_dir).load_spec_dict()
        spec_dict["search"] = dataclasses.asdict(_search_overrides(args, spec_dict["search"]))
        report = find_slices(args.run_dir, spec_dict, caption=args.caption, partial=args.partial)
    else:
        raise SpecError("<command line>", "give a run directory or --table T.parquet")
    print(format_slices(report, args.top))
    return 0


def _learn_tokens(args) -> int:
    from vbugs_ray.learn_tokens import TokenSettings, learn_token

    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise TokenError(f"--{name.replace('_', '-')}: must be >= 1")
    _seed_flag(args.seed, TokenError)
    for name in ("lr", "weight_decay"):
        if not math.isfinite(getattr(args, name)):
            raise TokenError(f"--{name.replace('_', '-')}: must be a finite number; got {getattr(args, name)!r}")
    settings = TokenSettings(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                             resolution=args.resolution, mixed_precision=args.mixed_precision, seed=args.seed)
    out = learn_token(args.model, args.images, args.token, args.init_word, args.out, settings, progress=_log)
    print(to_json({"token": args.token, "file": str(out)}, indent=None))
    return 0


def validate(path: str) -> dict:
    """What ``vbugs validate PATH`` checks and prints: the spec file read and checked, its
    backends and their options checked, its grid built. A mistake raises one of USER_ERRORS."""
    from vbugs_ray.grid import audit_rows, n_cells
    from vbugs_ray.roles.registry import validate_backends

    spec = load_spec(path)
    spec = validate_backends(spec)
    grid = audit_rows(spec)
    return {"name": spec.name, "cells": n_cells(spec), "rows": grid.num_rows}


def _validate(args) -> int:
    print(to_json(validate(args.spec or str(DEFAULT_SPEC)), indent=None))
    return 0


def user_error(exc: BaseException) -> str | None:
    """The input mistake behind ``exc`` as one line, if there is one. A backend that raises
    SpecError inside a Ray actor reaches the driver wrapped in Ray's errors: as the cause of a
    task error, or only as text in an actor's remote traceback (``error_msg``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(exc, USER_ERRORS) and not isinstance(cause, BaseException):
            return str(exc)
        names = "|".join(e.__name__ for e in USER_ERRORS)
        remote = re.findall(rf"(?:{names}): (.+)", getattr(exc, "error_msg", "") or "")
        if remote:
            return remote[-1].strip()
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    was_verbose = os.environ.get(VERBOSE_ENV)
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # read where Ray starts; inherited by a local Ray's workers
    previous = signal.getsignal(signal.SIGTERM)
    signals.install()  # SIGTERM unwinds like Ctrl-C: a local Ray is shut down, the run lock released
    try:
        commands = {"audit": _audit, "slices": _slices, "verify": _verify, "report": _report, "submit": _submit, "sweep": _sweep,
                    "status": _job_command, "logs": _job_command, "stop": _job_command, "diagnose": _diagnose, "discover": _discover,
                    "validate": _validate, "learn-tokens": _learn_tokens}
        return commands[args.command](args)
    except Exception as exc:
        mistake = user_error(exc)
        if mistake is None:
            raise
        print(f"vbugs: error: {mistake}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how, status = ("terminated", 143) if isinstance(exc, signals.Terminated) else ("interrupted", 130)
        print(f"vbugs: {how}; finished shards are kept, re-run the same command to resume", file=sys.stderr)
        return status
    finally:
        signals.restore(previous)
        if was_verbose is None:
            os.environ.pop(VERBOSE_ENV, None)  # a caller of main() in-process keeps its environment
        else:
            os.environ[VERBOSE_ENV] = was_verbose


if __name__ == "__main__":
    sys.exit(main())
