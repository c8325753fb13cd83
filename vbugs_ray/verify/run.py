"""``vbugs verify``: discovery, then rounds of regenerate-and-test, then verified bugs in report.json.

Layout under ``RUN_DIR/verify/<key>/`` (the key hashes the run's rows, the search and verify
settings and the captioner, so changing any of them starts a new folder and never mixes rows):
- ``hypotheses.json``: every source's hypotheses and the discovery summary, written once;
- ``round-N/plan.json`` and ``round-N/plan.parquet``: the round's tests and its fresh rows;
- ``round-N/rows/shard-*``: the rows after generate -> embed + filter -> classify, written like
  the audit's shards (staging folder, then one rename) and checked like them, so an interrupted
  run resumes with the missing shards (a damaged one is set aside in ``round-N/damaged/`` and
  written again) and a finished one re-runs without generating anything;
- ``round-N/pool/``: on a dataset, the held-out images embedded to find the round's phrase arms
  (``verify.retrieval``), planned and resumed the same way, before the round's own plan;
- ``replication/`` and ``counterfactual/``: a second sample of the verified bugs, and their failing
  images made again with the description changed (``verify.counterfactuals``), the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vbugs_ray import batchprobe
from vbugs_ray.atomic import atomic_write, atomic_write_json
from vbugs_ray.cache import key_of
from vbugs_ray.pipeline import actor_needs, make_executor
from vbugs_ray.raycluster import ray_session
from vbugs_ray.roles import registry
from vbugs_ray.roles.vocabulary import candidate_phrases
from vbugs_ray.spec import AuditSpec
from vbugs_ray.store import RunStore, plan_ranges, plan_shards, rows_fingerprint
from vbugs_ray.terminal import open_bar
from vbugs_ray.verify import complements, counterfactuals, retrieval
from vbugs_ray.verify.hypotheses import Hypothesis, deduplicate
from vbugs_ray.verify.plan import BASE, held_out_reader, plan_round
from vbugs_ray.verify.sources import SOURCES, discover
from vbugs_ray.verify.verdicts import Verdict, arms_of, judge_round, merge_bugs, part_needed

Progress = Callable[[str], None]
# of the verification procedure, part of the folder key (2: per-class MLP diagnosis ensembles; 3: merging checks
# fresh rows; 4: complements of verified modes tested in the next round; 5: their reference arms apart, IUT tests;
# 6: a dataset's free phrases tested on the held-out images the embedder finds, verify.retrieval)
VERSION = 6


def verify_key(spec: AuditSpec) -> str:
    data = spec.to_dict()
    return key_of({"rows": rows_fingerprint(spec), "search": data["search"], "verify": data["verify"],
                   "captioner": data["captioner"], "version": VERSION})[:16]


def _interleave(by_source: dict[str, list[Hypothesis]]) -> list[Hypothesis]:
    """One queue: the sources' first hypotheses, then their second ones..., one test per key."""
    flat = [h for kind in SOURCES for h in by_source.get(kind, [])]
    return deduplicate(flat)


def _save_plan(folder, table: pa.Table, info: dict) -> None:
    """A round's fresh rows (plan.parquet) and what they test (plan.json), each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "plan.parquet", lambda tmp: pq.write_table(table, tmp))
    atomic_write_json(folder / "plan.json", {**info, "rows": table.num_rows})


class Verification:
    """The state of one run's verification folder."""

    def __init__(self, store: RunStore, spec: AuditSpec):
        self.store, self.spec, self.settings = store, spec, spec.verify
        self.root = store.root / "verify" / verify_key(spec)
        self.hypotheses: dict[str, Hypothesis] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.arms: dict = {}
        self.worked = False  # whether this run did any work (discovery, images): its time counts
        self._embedder_box = None
        self.pool_rows = 0  # held-out images embedded to find phrase arms (verify.retrieval)

    # -- discovery, once --------------------------------------------------------------------
    def queue(self, flagged: list[dict], progress: Progress) -> tuple[list[Hypothesis], dict]:
        path = self.root / "hypotheses.json"
        if path.exists():
            data = json.loads(path.read_text())
            return [Hypothesis.from_state(h) for h in data["queue"]], data["discovery"]
        self.worked = True
        if not self.spec.axes and not candidate_phrases(self.spec, with_classes=False):
            progress("warning: a class-only audit describes its failures with words, and this spec has none beyond "
                     "the class names: add verify.vocabulary (phrases your users would use) to get hypotheses")
        by_source, summary = discover(self.store, self.spec, flagged, self._embedder(progress), progress)
        self._embedder_box = None  # its memory back before verification's actors start
        queue = _interleave(by_source)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"queue": [h.state() for h in queue], "discovery": summary})
        return queue, summary

    # -- one round ---------------------------------------------------------------------------
    def _next_tests(self, queue: list[Hypothesis]) -> list[Hypothesis]:
        """The complements of the modes verified so far first (``verify.complements``), then the
        children of verified descriptions with several parts (pruning), then the queue."""
        tests = complements.propose(self.hypotheses, self.verdicts, self.arms, self.settings.alpha_per_round,
                                    tested=set(self.verdicts))
        seen = set(self.verdicts) | {h.key for h in tests}
        for key, verdict in self.verdicts.items():
            h = self.hypotheses[key]
            if verdict.verified and len(h.parts) > 1:
                for part in h.parts:
                    child = h.without(part)
                    if child.key not in seen:
                        seen.add(child.key)
                        tests.append(child)
        tests += [h for h in queue if h.key not in seen]
        return tests[: self.settings.max_hypotheses]

    def _plan(self, index: int, queue: list[Hypothesis], first_row_id: int, used: set[int], executor,
              progress: Progress) -> tuple[list[Hypothesis], pa.Table, int] | None:
        """The round's tests, its rows and the first row id after them (a dataset's phrase arms
        first embed a pool of held-out images, whose rows come before the round's)."""
        folder = self.root / f"round-{index}"
        plan_path, rows_path = folder / "plan.json", folder / "plan.parquet"
        if plan_path.exists():
            info = json.loads(plan_path.read_text())
            tests, table = [Hypothesis.from_state(h) for h in info["tests"]], pq.read_table(rows_path)
            pool_path = folder / "pool" / "plan.parquet"
            for path in (rows_path, pool_path):  # every seed the round's planning used
                if path.exists():
                    seeds = pq.read_table(path, columns=["seed"]).column("seed")
                    used.update(seeds.to_numpy().tolist())
                    self.pool_rows += len(seeds) if path == pool_path else 0
            return tests, table, info.get("next_row_id", first_row_id + table.num_rows)
        tests = self._next_tests(queue)
        if not tests:
            return None
        phrase_rows = None
        if held_out_reader(self.spec) is not None and retrieval.phrase_arms(tests):
            pool, first_row_id = self._pool(index, tests, first_row_id, used, executor, progress)
            phrase_rows = retrieval.retriever(self.spec, pool, self._embedder(progress))
        have_base = {name[len(BASE):] for name in self.arms if name.startswith(BASE)}
        base = sorted({h.class_name for h in tests} - have_base, key=self.spec.classes.index)
        table = plan_round(self.spec, tests, base, self.settings.images_per_hypothesis, first_row_id, used, index,
                           phrase_rows)
        self._embedder_box = None  # its memory (a GPU's, perhaps) back before the round's actors start
        next_row_id = first_row_id + table.num_rows
        _save_plan(folder, table, {"tests": [h.state() for h in tests], "base_classes": base,
                                   "next_row_id": next_row_id})
        return tests, table, next_row_id

    def _pool(self, index: int, tests: list[Hypothesis], first_row_id: int, used: set[int], executor,
              progress: Progress) -> tuple[retrieval.Pool, int]:
        """The round's pools (``verify.retrieval``): held-out images of each (class, axis values)
        its phrase arms name, embedded and scored; planned once (``round-N/pool/plan.*``), its
        shards resumed."""
        folder = self.root / f"round-{index}" / "pool"
        if (folder / "plan.json").exists():
            table = pq.read_table(folder / "plan.parquet")
            used.update(table.column("seed").to_numpy().tolist())
        else:
            pools = retrieval.pools_needed(tests)
            # its own seed stream (the round's arms draw from index's)
            table = plan_round(self.spec, pools, [], retrieval.POOL_FACTOR * self.settings.images_per_hypothesis,
                               first_row_id, used, retrieval.POOL_ROUND + index)
            for name, values in (("hypothesis", [retrieval.POOL + key for key in table.column("hypothesis").to_pylist()]),
                                 ("arm", ["pool"] * table.num_rows)):
                table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.string()))
            _save_plan(folder, table, {"pools": [h.state() for h in pools]})
        self.pool_rows += table.num_rows
        axes = tuple(self.spec.axis_names)
        if table.num_rows == 0:
            return retrieval.Pool.of(None, axes), first_row_id
        progress(f"verify round {index}: embedding {table.num_rows} held-out images to find the phrases' arms")
        rows = self._run_rows(f"round-{index}/pool", table, executor, progress)
        return (retrieval.Pool.of(rows.read(columns=["source", "seed", "hypothesis", "valid", "embedding", *axes]), axes),
                first_row_id + table.num_rows)

    def _embedder(self, progress: Progress):
        """The embedder in this process, for text (discovery's queries, retrieval's directions)."""
        if self._embedder_box is None:
            registry.prepare("embedder", self.spec.embedder, self.spec, progress)
            self._embedder_box = registry.create("embedder", self.spec.embedder, self.spec)
        return self._embedder_box

    def _generate(self, folder: str, table: pa.Table, executor, progress: Progress) -> dict:
        """The folder's rows (generated first where missing), as the columns ``arms_of`` reads."""
        axes = self.spec.axis_names
        texts = [*axes, "hypothesis", "pred", *(("source",) if "source" in table.column_names else ())]
        if table.num_rows == 0:  # every arm empty: a dataset holding no held-out image of what it describes
            return {**{name: np.zeros(0, str) for name in texts}, "row_id": np.zeros(0, np.int64),
                    "seed": np.zeros(0, np.int64), "valid": np.zeros(0, bool), "error": np.zeros(0, bool)}
        rows = self._run_rows(folder, table, executor, progress).read(
            columns=["row_id", "seed", "valid", "error", *texts])
        return {**{name: rows.column(name).to_numpy(zero_copy_only=False).astype(str) for name in texts},
                "row_id": rows.column("row_id").to_numpy(), "seed": rows.column("seed").to_numpy(),
                "valid": rows.column("valid").to_numpy(zero_copy_only=False).astype(bool),
                "error": rows.column("error").to_numpy(zero_copy_only=False).astype(bool)}

    def _run_rows(self, folder: str, table: pa.Table, executor, progress: Progress) -> RunStore:
        """The folder's run store, its missing shards generated first (a non-empty ``table``)."""
        shard_rows = self.spec.run.shard_rows
        first_row_id = int(table.column("row_id")[0].as_py())
        rounds = RunStore(self.root / folder, planned=plan_ranges(first_row_id, table.num_rows, shard_rows))
        shards = plan_shards(table.num_rows, shard_rows)
        whole = rounds.set_aside_damaged(progress).whole
        pending = [s for s in shards if s[0] not in whole]
        if pending:
            self.worked = True
            name = f"verify {folder.replace('-', ' ')}"
            with open_bar(progress, name, sum(stop - start for _, start, stop in pending), unit="img") as bar:
                executor().run(table, rounds, pending, lambda shard, rows: None if bar.live else progress(
                    f"{name}: shard {shard + 1}/{len(shards)} written ({rows} rows)"), bar.update)
        return rounds

    def _replicate(self, bugs: list[dict], next_row: int, used: set[int], executor, progress: Progress) -> int:
        """Each verified bug's description again, on a second fresh sample (new seeds, new base
        images), one-sided Fisher with BH over the bugs at ``alpha``: a bug that replicates is not
        the luck of one sample. Adds ``replication`` to each bug; returns the images generated."""
        tests = [self.hypotheses[b["hypothesis"]] for b in bugs]
        index = self.settings.rounds + 1  # its own seed stream, after the rounds'
        base = sorted({h.class_name for h in tests}, key=self.spec.classes.index)
        table = self._plan_for_bugs("replication", [b["hypothesis"] for b in bugs], lambda: plan_round(
            self.spec, tests, base, self.settings.images_per_hypothesis, next_row, used, index), progress)
        verdicts = judge_round(tests, arms_of(self._generate("replication", table, executor, progress)),
                               self.settings.alpha, index)
        for bug, h in zip(bugs, tests):
            v = verdicts[h.key]
            bug["replication"] = {"replicated": v.verified, **{name: getattr(v, name) for name in (
                "n", "errors", "error_rate", "base_error_rate", "p_value", "q_value")}}
        progress(f"replication: {sum(v.verified for v in verdicts.values())} of {len(bugs)} verified bugs "
                 f"significant again on a second fresh sample (BH level {self.settings.alpha:g})")
        return table.num_rows

    def _plan_for_bugs(self, name: str, keys: list[str], make: Callable[[], pa.Table], progress: Progress
                       ) -> pa.Table:
        """The rows ``name`` (replication, counterfactual) planned for these verified bugs: the
        stored plan, or ``make()``'s when none is stored or the bugs changed since (the rounds'
        rows are the same, but another release merges them into other bugs)."""
        folder = self.root / name
        if (folder / "plan.json").exists() and json.loads((folder / "plan.json").read_text())["bugs"] != keys:
            progress(f"{name}: the verified bugs changed since its images were planned; planning again")
            shutil.rmtree(folder)
        if (folder / "plan.json").exists():
            return pq.read_table(folder / "plan.parquet")
        table = make()
        _save_plan(folder, table, {"bugs": keys})
        return table

    def _counterfactuals(self, bugs: list[dict], made: list[dict], next_row: int, executor, progress: Progress) -> int:
        """Each verified bug's failing images made again with its description changed
        (``verify.counterfactuals``); adds ``counterfactuals`` to the bugs. Returns the images made."""
        cls = registry.backend_class("generator", self.spec.generator.backend)
        draws = not getattr(cls, "reads_dataset", False)
        if not getattr(cls, "draws_axes", draws) or not made:
            return 0  # a dataset's images cannot be changed
        rows = {name: np.concatenate([m[name] for m in made]) for name in made[0]}
        table = self._plan_for_bugs("counterfactual", [b["hypothesis"] for b in bugs[:counterfactuals.MAX_BUGS]],
                                    lambda: counterfactuals.plan(self.spec, bugs, self.hypotheses, rows, next_row,
                                                                 draws), progress)
        if table.num_rows == 0:
            return 0
        counterfactuals.summarise(bugs, table, self._generate("counterfactual", table, executor, progress))
        pairs = sum(c["n"] for b in bugs for c in b.get("counterfactuals", []))
        fixed = sum(c["fixed"] for b in bugs for c in b.get("counterfactuals", []))
        progress(f"counterfactuals: {pairs} failing images made again with their description changed; "
                 f"{fixed} classified correctly then")
        return table.num_rows

    def run(self, flagged: list[dict], progress: Progress) -> dict:
        queue, discovery = self.queue(flagged, progress)
        grid = self.store.read(columns=["row_id", "seed"])
        used = set(grid.column("seed").to_numpy().tolist())
        next_row = int(pc.max(grid.column("row_id")).as_py()) + 1
        executor_box: list = []

        def executor():
            if not executor_box:
                shipped = registry.prepare_all(self.spec, progress)
                executor_box.append(make_executor(batchprobe.resolve(self.spec, self.store.root, progress, shipped),
                                                  shipped))
            return executor_box[0]

        generated = 0
        rounds_run = 0
        made: list[dict] = []  # each round's rows (the counterfactuals' failing images are among them)
        alpha = self.settings.alpha_per_round
        session = ray_session(self.spec.run, progress, actor_needs(self.spec)) if self.spec.run.executor == "ray" \
            else contextlib.nullcontext()
        with session:
            try:
                for index in range(1, self.settings.rounds + 1):
                    planned = self._plan(index, queue, next_row, used, executor, progress)
                    if planned is None:
                        break
                    tests, table, next_row = planned
                    t0 = time.time()
                    columns = self._generate(f"round-{index}", table, executor, progress)
                    made.append(columns)
                    generated += table.num_rows
                    rounds_run = index
                    self.arms.update(arms_of(columns, tuple(self.spec.axis_names)))
                    for h in tests:
                        self.hypotheses[h.key] = h
                    verdicts = judge_round(tests, self.arms, alpha, index)
                    self.verdicts.update(verdicts)
                    progress(f"verify round {index}: {sum(v.verified for v in verdicts.values())} of {len(tests)} "
                             f"hypotheses verified at BH level {alpha:g} ({table.num_rows} images, "
                             f"{time.time() - t0:.0f}s)")
                bugs = merge_bugs(self.spec, self.hypotheses, self.verdicts, self.arms, alpha)
                if self.settings.replicate and bugs:
                    replicated = self._replicate(bugs, next_row, used, executor, progress)
                    generated, next_row = generated + replicated, next_row + replicated
                if bugs:
                    generated += self._counterfactuals(bugs, made, next_row, executor, progress)
                generated += self.pool_rows
            finally:
                if executor_box:
                    executor_box[0].close()
        return {
            "verified_bugs": bugs,
            "hypotheses": [self._tested(key) for key in self.verdicts],
            "untested_hypotheses": len([h for h in queue if h.key not in self.verdicts]),
            "discovery": discovery,
            "verification": {**dataclasses.asdict(self.settings), "alpha_per_round": alpha, "rounds_run": rounds_run,
                             "images_generated": generated, "folder": str(self.root),
                             "replicated": sum(b["replication"]["replicated"] for b in bugs)
                             if self.settings.replicate else None,
                             "images_per_verified_bug": generated / len(bugs) if bugs else None},
        }

    def _tested(self, key: str) -> dict:
        h, v = self.hypotheses[key], self.verdicts[key]
        out = {**h.to_dict(self.spec), "verdict": "verified" if v.verified else "rejected",
               **{k: val for k, val in v.to_dict().items() if k not in ("key", "row_ids")}}
        if h.parent in self.verdicts:
            out["part_needed"] = part_needed(self.verdicts[h.parent], v, self.settings.alpha_per_round)
        return out
