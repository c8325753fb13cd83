"""The flow of one audit, end to end: spec -> grid -> (Ray Data stages) -> run store -> slice
search -> report -> verification, each step resumable on its own (``generate_rows``,
``find_slices``, ``verify_run``) and all of them in ``audit``. The CLI and the Python API
(``vbugs_ray.api``) are thin shells around it.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

from vbugs_ray import batchprobe, timing
from vbugs_ray.terminal import NullBar, open_bar, stderr
from vbugs_ray.atomic import atomic_write_json, check_output
from vbugs_ray.caption import caption_slices
from vbugs_ray.datasets.rows import DATA_ERROR
from vbugs_ray.datasets.sources import fresh_listings
from vbugs_ray.datasets.sources import table_key
from vbugs_ray.errors import RunStoreError, SpecError
from vbugs_ray.grid import audit_rows
from vbugs_ray.pipeline import actor_needs, make_executor
from vbugs_ray.raycluster import ray_session, shard_runner
from vbugs_ray.report import build_report
from vbugs_ray.roles.registry import prepare_all, validate_backends
from vbugs_ray.runlock import run_lock
from vbugs_ray.slices.parquet import parquet_counter, shard_pieces, spans_shards
from vbugs_ray.slices.search import run_search
from vbugs_ray.spec import AuditSpec, node_needs, parse_spec
from vbugs_ray.store import RunStore, plan_ranges, plan_shards
from vbugs_ray.verify.run import Verification, verify_key

Progress = Callable[[str], None]


_log = stderr  # '[vbugs] ...' lines on stderr, and progress bars when it is a terminal


def generate_rows(spec: AuditSpec, run_dir: str | Path, progress: Progress = _log) -> RunStore:
    """Fill the run store with every grid row (resumes: whole shards are skipped, damaged ones
    set aside and written again). A first start that fails before a shard is published leaves
    nothing behind, so a corrected spec starts in the same folder."""
    # a dataset is read afresh by each run (it may have changed since this process last read it)
    with fresh_listings(), run_lock(run_dir, "vbugs audit", create=True):
        return _generate_rows(spec, run_dir, progress)


def _generate_rows(spec: AuditSpec, run_dir: str | Path, progress: Progress) -> RunStore:
    spec = validate_backends(spec)
    grid = audit_rows(spec)
    store = RunStore(run_dir, planned=plan_ranges(0, grid.num_rows, spec.run.shard_rows))
    first_start = not store.spec_path.exists()
    store.open_for(spec, grid.num_rows, data_key(grid))
    try:
        _fill(spec, grid, store, progress)
    except BaseException:
        if first_start:
            store.forget_failed_start()
        raise
    return store


def data_key(grid) -> str | None:
    """For rows read from a dataset, a hash of which image each row reads and what it is said to
    show (a resumed run must read the same data); None for generated rows."""
    return table_key(grid) if "source" in grid.column_names else None


def _fill(spec: AuditSpec, grid, store: RunStore, progress: Progress) -> None:
    """Write the grid rows of every shard that is not whole, in one execution."""
    shards = plan_shards(grid.num_rows, spec.run.shard_rows)
    whole = store.set_aside_damaged(progress).whole
    pending = [s for s in shards if s[0] not in whole]
    progress(f"{grid.num_rows} images in {len(shards)} shards; {len(shards) - len(pending)} already done")
    if not pending:
        return
    shipped = prepare_all(spec, progress)  # trained here, once; actors on every node get these files

    t0 = time.time()
    n_done = images_done = 0
    images_pending = sum(stop - start for _, start, stop in pending)

    bar = NullBar()  # the live bar once the execution starts (below)

    def published(index: int, rows: int) -> None:
        """Off a terminal, one line per shard: where the run is, how fast it goes and when it
        should end (the rate counts from the execution's start, model loading included); on a
        terminal the bar says so, row by row."""
        nonlocal n_done, images_done
        n_done, images_done = n_done + 1, images_done + rows
        seconds = time.time() - t0
        rate = images_done / max(seconds, 1e-9)
        eta = (images_pending - images_done) / rate if rate else 0.0
        if not bar.live:
            progress(f"shard {index + 1}/{len(shards)} written ({rows} rows; {images_done}/{images_pending} images, "
                     f"{rate:.0f} images/s, {seconds:.0f}s, about {eta:.0f}s left)")

    with ray_session(spec.run, progress, actor_needs(spec)) if spec.run.executor == "ray" else contextlib.nullcontext():
        executor = make_executor(batchprobe.resolve(spec, store.root, progress, shipped), shipped)
        try:
            with open_bar(progress, "images", images_pending, unit="img") as bar:
                loads = executor.run(grid, store, pending, published, bar.update)
        finally:
            executor.close()
            timing.add(store.root, "generation", time.time() - t0)
    atomic_write_json(store.root / "loads.json", loads)
    nodes = json.loads((store.root / "nodes.json").read_text()) if (store.root / "nodes.json").exists() else {}
    progress("models loaded: " + ", ".join(f"{role} {n}" + (f" on {len(nodes[role])} nodes" if len(nodes.get(role, ())) > 1
                                                           else "") for role, n in loads.items())
             + f" (one execution over {len(pending)} shards)")


def rescore_rows(source: RunStore, spec: AuditSpec, run_dir: str | Path, progress: Progress = _log) -> RunStore:
    """A sweep's other classifiers: the rows of ``source`` (drawn, filtered and embedded once, for
    the sweep's first classifier) scored by ``spec``'s classifier into ``run_dir``; resumable and
    checked like ``generate_rows``."""
    with run_lock(run_dir, "vbugs sweep", create=True):
        spec = validate_backends(spec)
        n_rows = audit_rows(spec).num_rows
        store = RunStore(run_dir, planned=plan_ranges(0, n_rows, spec.run.shard_rows))
        first_start = not store.spec_path.exists()
        store.open_for(spec, n_rows)
        try:
            _rescore(source, spec, n_rows, store, progress)
        except BaseException:
            if first_start:
                store.forget_failed_start()
            raise
    return store


def _rescore(source: RunStore, spec: AuditSpec, n_rows: int, store: RunStore, progress: Progress) -> None:
    shards = plan_shards(n_rows, spec.run.shard_rows)
    pending = [s for s in shards if s[0] not in store.set_aside_damaged(progress).whole]
    progress(f"{store.root.name}: scoring the {n_rows} stored images of {source.root.name} ({len(shards)} shards; "
             f"{len(shards) - len(pending)} already done)")
    if not pending:
        return
    sources = {index: [str(p) for p in parts] for index, parts in source.checked().whole.items()}
    if any(index not in sources for index, _, _ in pending):
        raise RunStoreError(f"{source.root} lacks shards this sweep scores again; finish its run first")
    shipped = prepare_all(spec, progress, roles=("classifier",))
    t0 = time.time()
    cls = spec.classifier
    needs = {"classifier": node_needs(cls.num_cpus, cls.num_gpus, cls.accelerator_type, cls.resources)}
    with ray_session(spec.run, progress, needs) if spec.run.executor == "ray" else contextlib.nullcontext():
        # only the classifier runs here: the other roles' auto batch sizes are not measured
        executor = make_executor(batchprobe.resolve(spec, store.root, progress, shipped, roles=("classifier",)),
                                 shipped)
        try:
            with open_bar(progress, f"{store.root.name}: images", sum(b - a for _, a, b in pending), unit="img") as bar:
                loads = executor.rescore(sources, store, pending, lambda *_: None, bar.update)
        finally:
            executor.close()
            timing.add(store.root, "scoring", time.time() - t0)
    atomic_write_json(store.root / "loads.json", loads)


def filter_summary(store: RunStore) -> dict | None:
    """How many rows the CLIP filter marked invalid, and why (None: the run has no filter column)."""
    if "valid" not in store.dataset().schema.names:
        return None
    table = store.read(columns=["valid", "filter_reason"])
    valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    reasons: dict[str, int] = {}
    for text in table.column("filter_reason").to_pylist():
        for reason in filter(None, (text or "").split(",")):
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"n_generated": int(len(valid)), "n_invalid": int((~valid).sum()), "invalid_reasons": reasons}


def find_slices(run_dir: str | Path, spec_dict: dict | None = None, progress: Progress = _log,
                caption: bool = True, partial: bool = False, html: bool = True) -> dict:
    """Run the slice search on a run store and (re)write RUN_DIR/report.json (and, if ``html``,
    report.html). Needs no model unless ``caption`` (and the spec has a captioner): re-running
    the statistics of a finished run works wherever its run directory is readable. A run with a
    shard missing or damaged is a one-line error, unless ``partial``: then the whole shards are
    searched and the report says how many rows it lacks."""
    with run_lock(run_dir, "vbugs slices"):
        return _find_slices(run_dir, spec_dict, progress, caption, partial, html)


def _find_slices(run_dir: str | Path, spec_dict: dict | None, progress: Progress, caption: bool,
                 partial: bool, html: bool) -> dict:
    t0 = time.time()
    store = RunStore(run_dir, partial=partial)
    spec = parse_spec(spec_dict or store.load_spec_dict(), source=str(store.spec_path))
    features = ["class", *spec.axis_names]
    checked = store.checked()
    checked.name_stray(progress)
    if checked.missing:
        progress(f"searching a partial run: {checked.describe()} ({checked.rows_missing()} rows missing)")
    filtered = filter_summary(store)
    settings = spec.search
    pieces = shard_pieces(store.files())
    # counts come shard by shard (Ray tasks when the run spans several shards), never the whole
    # table at once; rows the CLIP filter marked invalid are not counted
    with shard_runner(spec.run.executor == "ray" and spans_shards(pieces), spec.run, progress) as runner:
        counter = parquet_counter(pieces, "error", features, "loss", settings.max_values, settings.n_bins, runner,
                                  valid_col="valid" if filtered else None)
        with open_bar(progress, "slice search", settings.max_order, unit="level") as bar:
            result = run_search(_LevelTicks(counter, bar), settings)
            bar.finish()  # a search may stop before max_order: nothing left to expand
    if caption and spec.captioner is not None and result.flagged:
        progress(f"captioning the top {min(settings.top_k, len(result.flagged))} flagged slices")
        caption_slices(result.flagged, store, spec, features, settings.top_k, progress)
    extra = {"partial": True, "rows_missing": checked.rows_missing(), "shards_missing": checked.missing} \
        if checked.missing else {}
    reads = DATA_ERROR in store.dataset().schema.names  # rows a dataset generator read, not drew
    report = build_report(result, settings, features, name=spec.name, **extra,
                          **({"filter": filtered} if filtered else {}), **({"read_from_dataset": True} if reads else {}))
    report.update(_verification_still_valid(store, spec, progress))
    timing.put(store.root, "search", time.time() - t0)
    atomic_write_json(store.report_path, report)
    reasons = ", ".join(f"{k} {v}" for k, v in (filtered or {}).get("invalid_reasons", {}).items())
    invalid = f"; {filtered['n_invalid']} of {filtered['n_generated']} rows marked invalid" + \
        (f" ({reasons})" if reasons else "") if filtered else ""
    progress(f"slice search: {result.evaluated} slices tested, {len(result.flagged)} flagged{invalid} -> {store.report_path}")
    if html:
        write_page(store.root, progress)
    return report


def write_page(run_dir: Path, progress: Progress) -> None:
    """RUN_DIR/report.html from report.json. A page that fails to render costs one line, never
    the run's results: report.json is already written, and `vbugs report RUN_DIR` tries again."""
    from vbugs_ray.webreport import write_html

    try:
        progress(f"report for people -> {write_html(run_dir)}")
    except Exception as exc:  # noqa: BLE001 - the results are safe in report.json; say so and go on
        progress(f"report.html not written ({type(exc).__name__}: {exc}); `vbugs report {run_dir}` tries again")


class _LevelTicks:
    """A slice-search counter that moves a bar one level per lattice level counted (both
    searches count a level in one call: ``count`` or ``count_children``)."""

    def __init__(self, counter, bar):
        self._counter, self._bar = counter, bar

    def __getattr__(self, name):
        return getattr(self._counter, name)

    def count(self, combos):
        out = self._counter.count(combos)
        self._bar.update(1)
        return out

    def count_children(self, parents):
        out = self._counter.count_children(parents)
        self._bar.update(1)
        return out


VERIFICATION_KEYS = ("verified_bugs", "hypotheses", "untested_hypotheses", "discovery", "verification")


def _verification_still_valid(store: RunStore, spec: AuditSpec, progress: Progress) -> dict:
    """The previous report's verification results, if the slice search that fed them is the one
    that just ran (same rows, search and verify settings: same verification folder); else none."""
    if not store.report_path.exists():
        return {}
    old = json.loads(store.report_path.read_text())
    if "verification" not in old:
        return {}
    if spec.verify is not None and Path(old["verification"].get("folder", "")).name == verify_key(spec):
        return {k: old[k] for k in VERIFICATION_KEYS if k in old}
    progress("the previous verified bugs came from other search or verify settings and are left out of "
             "report.json; run `vbugs verify RUN_DIR` to verify again")
    return {}


def verify_run(run_dir: str | Path, spec_dict: dict | None = None, progress: Progress = _log) -> dict:
    """Discovery and regenerate-and-verify on a finished run (resumable): adds ``verified_bugs``,
    ``hypotheses``, ``discovery`` and ``verification`` to RUN_DIR/report.json."""
    with fresh_listings(), run_lock(run_dir, "vbugs verify"):
        return _verify_run(run_dir, spec_dict, progress)


def _verify_run(run_dir: str | Path, spec_dict: dict | None, progress: Progress) -> dict:
    store = RunStore(run_dir)
    spec = validate_backends(parse_spec(spec_dict or store.load_spec_dict(), source=str(store.spec_path)))
    if spec.verify is None:
        raise SpecError("verify", "is false in this run's spec; set verify: {} (or its options) to verify")
    if store.data_key() is not None and store.data_key() != data_key(audit_rows(spec)):
        # the held-out share is drawn from the listing: other data could hold out images the audit saw
        raise RunStoreError(f"{store.root} holds rows read from other data (the dataset's files, labels or metadata "
                            "changed since the audit); audit again into another --out")
    if not store.report_path.exists():
        find_slices(run_dir, spec.to_dict(), progress, caption=False, html=False)
    report = json.loads(store.report_path.read_text())
    t0 = time.time()
    verification = Verification(store, spec)
    result = verification.run(report["flagged_slices"], progress)
    if verification.worked:
        timing.add(store.root, "verification", time.time() - t0)
    report.update(result)
    atomic_write_json(store.report_path, report)
    progress(f"verification: {len(result['verified_bugs'])} verified bugs from {len(result['hypotheses'])} "
             f"hypotheses tested ({result['verification']['images_generated']} fresh images) -> {store.report_path}")
    write_page(store.root, progress)
    return report


def audit(spec: AuditSpec, run_dir: str | Path | None = None, progress: Progress = _log) -> dict:
    """Run a whole audit and return the report (also written to RUN_DIR/report.json): rows,
    slice search, then (unless ``verify: false``) discovery and verification."""
    run_dir = check_output(run_dir or spec.output_dir, "run directory", folder=True)  # before hours of work
    with fresh_listings(), run_lock(run_dir, "vbugs audit", create=True):  # one listing, one writer per run dir
        spec = validate_backends(spec)  # a mistake in the spec is reported before Ray starts
        return _audit(spec, run_dir, progress)


def _audit(spec: AuditSpec, run_dir: Path, progress: Progress) -> dict:
    with ray_session(spec.run, progress, actor_needs(spec)) if spec.run.executor == "ray" \
            else contextlib.nullcontext():
        generate_rows(spec, run_dir, progress)
        report = find_slices(run_dir, spec.to_dict(), progress, html=spec.verify is None)
        if spec.verify is not None:
            report = verify_run(run_dir, spec.to_dict(), progress)
    return report
