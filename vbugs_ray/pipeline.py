"""The audit's stages as batch callables, in the order of the flow, and the two executors that
chain them: generate -> embed + filter -> classify -> rows.

Each stage is a class whose ``__init__`` loads its model once and whose ``__call__`` maps a batch
(a dict of numpy arrays) to a batch, so the same object runs under Ray Data's ``map_batches``
(actor pools) and on a plain dict in a test. The run store turns the last batch into its rows
(``store.rows_table``) and ``store.ShardWriter`` publishes each shard when it is whole.
``RayExecutor`` runs every pending row of a run as one streaming Ray Data execution, so each actor
loads its model once for the whole run and the pipeline never drains between shards;
``LocalExecutor`` runs the same stages in-process (tests, benchmarks, debugging).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import uuid
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.errors import RunStoreError
from vbugs_ray.failures import FAILED, FAILED_REASON, FailureBudget, guarded, reasons_column
from vbugs_ray.filter import ClipFilter
from vbugs_ray.roles import registry
from vbugs_ray.datasets.rows import DATA_ERROR, reason_code
from vbugs_ray.roles.protocols import Classifier, Embedder, Generator
from vbugs_ray.shipping import pack, unpacked
from vbugs_ray.spec import AuditSpec, RoleSpec, node_needs, pinning
from vbugs_ray.store import RunStore, ShardWriter, rows_table

TOP_K = 5


def record_load(load_log: str | None, role: str) -> None:
    """One file per model load under ``load_log``, holding the Ray node it happened on:
    executions count them (model loads per role) and say where the actors ran."""
    if load_log:
        Path(load_log, f"{role}-{uuid.uuid4().hex}").write_text(_node_id())


def _node_id() -> str:
    import sys

    ray = sys.modules.get("ray")  # never imported just to ask: the local executor runs without Ray
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else "local"


def limit_threads(role_spec: RoleSpec, num_cpus: float | None = None) -> None:
    """Inside a Ray actor, use as many torch threads as CPUs reserved (``num_cpus``, else the
    role's; at least one)."""
    import ray
    import torch

    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        torch.set_num_threads(max(1, int(round(role_spec.num_cpus if num_cpus is None else num_cpus))))


class GenerateStage:
    """prompt, seed -> image (N, H, W, 3) uint8."""

    def __init__(self, spec: AuditSpec, load_log: str | None = None, backends: dict | None = None,
                 shipped: dict | None = None):
        registry.adopt(backends)  # backends the driver registered (vbugs_ray.register_backend)
        limit_threads(spec.generator)
        record_load(load_log, "generator")
        with unpacked(shipped):  # the driver's trained weights, on this node (vbugs_ray.shipping)
            self.backend: Generator = registry.create("generator", spec.generator, spec)
        # a failed batch's placeholder images: the shape of the last real ones (one shape per run)
        self._shape: tuple = (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE, 3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        prompts, seeds = list(batch["prompt"]), np.asarray(batch["seed"])
        n = len(prompts)
        if getattr(self.backend, "reads_dataset", False):
            images, failed = self._read(batch, out, n)
        else:
            images, failed = guarded(lambda rows: self.backend.generate([prompts[i] for i in rows], seeds[rows]), n,
                                     "generator")
        if images is not None:
            self._shape = images.shape[1:]
        out["image"] = images if images is not None else np.zeros((n, *self._shape), np.uint8)
        out[FAILED] = reasons_column(batch, n)
        for row, reason in failed.items():
            out[FAILED][row] = reason
        return out

    def _read(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray], n: int):
        """A reading generator's images; a row whose image or label is unusable (unreadable file,
        unknown label, missing metadata) is kept, invalid, with its reason (``data_error``):
        bad data is counted in the report, not a failure of the run."""
        errors = np.full(n, "", dtype=object)

        def read(rows: np.ndarray) -> np.ndarray:
            images, row_errors = self.backend.generate_rows({k: np.asarray(v)[rows] for k, v in batch.items()})
            errors[rows] = row_errors
            return images

        images, failed = guarded(read, n, "generator")
        out[DATA_ERROR] = errors
        out["valid"] = errors == ""
        out["filter_reason"] = np.array([reason_code(e) for e in errors], dtype=object)
        return images, failed


class EmbedStage:
    """image -> embedding (N, D) float32, L2-normalised; then the CLIP filter's verdict from the
    same embeddings: valid, filter_reason (and the similarities, when the spec has a filter)."""

    def __init__(self, spec: AuditSpec, load_log: str | None = None, backends: dict | None = None,
                 shipped: dict | None = None):
        registry.adopt(backends)  # backends the driver registered (vbugs_ray.register_backend)
        limit_threads(spec.embedder)
        record_load(load_log, "embedder")
        with unpacked(shipped):  # the driver's trained weights, on this node (vbugs_ray.shipping)
            self.backend: Embedder = registry.create("embedder", spec.embedder, spec)
        self.filter = ClipFilter(spec, self.backend) if spec.filter is not None else None
        self._size: int | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        n = len(batch["image"])
        reasons = reasons_column(batch, n)
        ok = np.flatnonzero(reasons == "")
        images = np.asarray(batch["image"])
        embedded, failed = guarded(lambda rows: self.backend.embed_images(images[ok[rows]]), len(ok), "embedder")
        for row, reason in failed.items():
            reasons[ok[row]] = reason
        embedding = np.zeros((n, self._dim(embedded)), np.float32)
        if embedded is not None:
            embedding[ok] = embedded
        out["embedding"] = embedding
        if self.filter is not None:
            out.update(self.filter(batch, out["embedding"]))
        else:
            out["valid"] = np.ones(n, bool)
            out["filter_reason"] = np.full(n, "", dtype=object)
        if "valid" in batch:  # marked before: a reading generator's bad data, whose reason comes first
            before = np.asarray(batch["filter_reason"], dtype=object)
            out["valid"] = np.asarray(out["valid"], bool) & np.asarray(batch["valid"], bool)
            out["filter_reason"] = np.where(before == "", out["filter_reason"], before)
        bad = reasons != ""
        out["valid"] = np.asarray(out["valid"], bool) & ~bad
        out["filter_reason"] = np.where(bad, FAILED_REASON, np.asarray(out["filter_reason"], dtype=object))
        out[FAILED] = reasons
        return out

    def _dim(self, embedded: np.ndarray | None) -> int:
        """The embedding size (asked of the model when no image of the batch could be embedded:
        every batch's embedding column must have the same size)."""
        if embedded is not None:
            return embedded.shape[1]
        if self._size is None:
            self._size = int(np.asarray(self.backend.embed_texts(["a photo"])).shape[1])
        return self._size


class ClassifyStage:
    """image, label, valid -> the classifier's verdict per row.

    pred_index / pred_name: the model's top-1 output; pred_label / pred: the spec class that
    output counts for (-1 / the output's name when none); p_true: probability mass on the true
    class's outputs; loss: -log p_true; error: top-1 outside the true class's outputs; top5: the
    top outputs' names, tab-joined between stages (the store makes them a list column).
    Rows the CLIP filter marked invalid are not classified (their image does not show what the
    row says): they get pred_index -1, empty names, NaN p_true and loss, and error false.
    """

    def __init__(self, spec: AuditSpec, load_log: str | None = None, backends: dict | None = None,
                 shipped: dict | None = None):
        registry.adopt(backends)  # backends the driver registered (vbugs_ray.register_backend)
        limit_threads(spec.classifier)
        record_load(load_log, "classifier")
        with unpacked(shipped):  # the driver's trained weights, on this node (vbugs_ray.shipping)
            self.backend: Classifier = registry.create("classifier", spec.classifier, spec)
        self.class_map = self.backend.class_map
        self.class_names = np.asarray(spec.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["label"])
        valid = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(n, bool)
        out = dict(batch)
        out.update({"pred_index": np.full(n, -1, np.int64), "pred_name": np.full(n, "", dtype=object),
                    "pred_label": np.full(n, -1, np.int64), "pred": np.full(n, "", dtype=object),
                    "p_true": np.full(n, np.nan, np.float32), "loss": np.full(n, np.nan, np.float32),
                    "top5": np.full(n, "", dtype=object), "error": np.zeros(n, bool)})
        reasons = reasons_column(batch, n)
        if valid.any():
            rows = np.nonzero(valid)[0]
            images, labels = np.asarray(batch["image"])[rows], np.asarray(batch["label"], np.int64)[rows]
            probs, failed = guarded(lambda part: self.backend.predict_proba(images[part]), len(rows), "classifier")
            probs = np.zeros((len(rows), 1)) if probs is None else np.asarray(probs, np.float64)
            for part in np.flatnonzero(~np.isfinite(probs).all(axis=1)):
                failed.setdefault(int(part), "classifier: non-finite output (NaN or inf probabilities)")
            good = np.setdiff1d(np.arange(len(rows)), np.fromiter(failed, int, len(failed)))
            if len(good):
                for name, values in self.verdict_of(probs[good], labels[good]).items():
                    out[name][rows[good]] = values
            for part, reason in failed.items():
                reasons[rows[part]] = reason
        bad = reasons != ""
        out[FAILED] = reasons
        if bad.any():  # failed rows are invalid rows: in no statistic, counted in the report
            out["valid"] = valid & ~bad
            out["filter_reason"] = np.where(bad, FAILED_REASON, np.asarray(batch.get("filter_reason", [""] * n),
                                                                           dtype=object))
        return out

    def verdict_of(self, probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        cmap = self.class_map
        top = np.argsort(-probs, axis=1, kind="stable")[:, : min(TOP_K, probs.shape[1])]
        top1 = top[:, 0]
        pred_label = cmap.class_of_output[top1]
        p_true = np.clip(cmap.p_true(probs, labels), 0.0, 1.0)
        return {
            "pred_index": top1,
            "pred_name": cmap.output_names[top1],
            "pred_label": pred_label,
            "pred": np.where(pred_label >= 0, self.class_names[np.maximum(pred_label, 0)], cmap.output_names[top1]),
            "p_true": p_true,
            "loss": -np.log(np.clip(p_true, 1e-12, 1.0)),
            "top5": np.asarray(["\t".join(cmap.output_names[r]) for r in top], dtype=object),
            "error": cmap.is_error(top1, labels),
        }


PLACEHOLDER_SIDE = 64  # the image of a row whose every generator call failed (kept invalid, never shown as data)

STAGES: tuple[tuple[str, type], ...] = (
    ("generator", GenerateStage),
    ("embedder", EmbedStage),
    ("classifier", ClassifyStage),
)


def _chunks(batch: dict[str, np.ndarray], size: int):
    for i in range(0, len(batch["row_id"]), size):
        yield {k: v[i:i + size] for k, v in batch.items()}


def _in_chunks(stage, batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``stage`` over ``batch`` in chunks of ``size`` rows, the outputs concatenated."""
    outs = [stage(chunk) for chunk in _chunks(batch, size)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


SCORES = ("pred_index", "pred_name", "pred_label", "pred", "p_true", "loss", "error", "top5")  # the classifier's


class RescoreStage:
    """Another classifier over stored rows (a sweep): the stored PNGs decoded, the classifier's
    columns replaced; the generator's, the embedder's and the filter's columns kept as stored."""

    def __init__(self, spec: AuditSpec, load_log: str | None = None, backends: dict | None = None,
                 shipped: dict | None = None):
        self.classify = ClassifyStage(spec, load_log, backends, shipped)
        self.batch_size = spec.classifier.batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        out = {k: v for k, v in batch.items() if k not in SCORES}
        if FAILED in out:  # a row the stored classifier failed on is this classifier's to try again
            reasons = np.array(out[FAILED], dtype=object)
            theirs = np.array([str(r).startswith("classifier:") for r in reasons], bool)
            reasons[theirs] = ""
            out[FAILED] = reasons
            out["valid"] = np.asarray(out["valid"], bool) | theirs
            out["filter_reason"] = np.where(theirs, "", np.asarray(out["filter_reason"], dtype=object))
        images = [Image.open(io.BytesIO(png)).convert("RGB") for png in batch["image_png"]]
        size = max((im.size for im in images), key=lambda s: s[0] * s[1])  # a failed row's placeholder may differ
        out["image"] = np.stack([np.asarray(im if im.size == size else im.resize(size)) for im in images])
        out = _in_chunks(self.classify, out, self.batch_size)
        out.pop("image")
        return out


class ScoreStage:
    """Embed + filter, then classify, in one actor: one actor to start and one hand-over between
    processes less, when the embedder and the classifier share a device (``scoring_fused``)."""

    def __init__(self, spec: AuditSpec, load_log: str | None = None, backends: dict | None = None,
                 shipped: dict | None = None):
        self.embed = EmbedStage(spec, load_log, backends, shipped)
        self.classify = ClassifyStage(spec, load_log, backends, shipped)
        self.classify_batch = spec.classifier.batch_size
        limit_threads(spec.embedder, spec.embedder.num_cpus + spec.classifier.num_cpus)  # the actor's CPUs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _in_chunks(self.classify, self.embed(batch), self.classify_batch)


def scoring_fused(spec: AuditSpec) -> bool:
    """Embedder and classifier in one actor: asked for (``run.fuse_scoring``) and placed alike:
    the same device setting, pool size and node type, both or neither on a GPU, and together at
    most one GPU per actor (an actor asking for more could fit no single-GPU node, where the two
    apart would)."""
    emb, cls = spec.embedder, spec.classifier
    return (spec.run.fuse_scoring and emb.device == cls.device and emb.concurrency == cls.concurrency
            and emb.max_concurrency == cls.max_concurrency and emb.accelerator_type == cls.accelerator_type
            and emb.resources == cls.resources
            and (emb.num_gpus > 0) == (cls.num_gpus > 0) and emb.num_gpus + cls.num_gpus <= 1)


class StagePlan(NamedTuple):
    """How the Ray executor runs one model stage: its actor pool and what each actor reserves."""

    stage: type
    batch_size: int
    actors: int  # the pool's size at the start
    num_cpus: float
    num_gpus: float
    max_actors: int  # an autoscaling pool grows up to this while work waits
    accelerator_type: str | None
    resources: dict  # custom node resources per actor (pinning to a node type)

    def pool(self):
        import ray

        return ray.data.ActorPoolStrategy(min_size=self.actors, max_size=self.max_actors)

    def remote_args(self) -> dict:
        return pinning(self.accelerator_type, self.resources)

    def needs(self) -> dict[str, float]:
        return node_needs(self.num_cpus, self.num_gpus, self.accelerator_type, self.resources)


def _plan(stage: type, role: RoleSpec, **overrides) -> StagePlan:
    fields = {"stage": stage, "batch_size": role.batch_size, "actors": role.concurrency, "num_cpus": role.num_cpus,
              "num_gpus": role.num_gpus, "max_actors": max(role.concurrency, role.max_concurrency or 0),
              "accelerator_type": role.accelerator_type, "resources": dict(role.resources)}
    return StagePlan(**{**fields, **overrides})


def ray_stages(spec: AuditSpec) -> list[StagePlan]:
    """The model stages in flow order for the Ray executor; a fused scoring actor reserves what
    the embedder and the classifier would together."""
    gen, emb, cls = spec.generator, spec.embedder, spec.classifier
    out = [_plan(GenerateStage, gen)]
    if scoring_fused(spec):
        summed = {k: emb.resources.get(k, 0) + cls.resources.get(k, 0) for k in {*emb.resources, *cls.resources}}
        out.append(_plan(ScoreStage, emb, num_cpus=emb.num_cpus + cls.num_cpus, num_gpus=emb.num_gpus + cls.num_gpus,
                         resources=summed))
    else:
        out += [_plan(EmbedStage, emb), _plan(ClassifyStage, cls)]
    return out


def actor_needs(spec: AuditSpec) -> dict[str, dict[str, float]]:
    """What one actor of each model stage needs of a node (CPU, GPU, custom resources, an
    accelerator type), by the roles it serves, for ``raycluster.check_resources``."""
    roles = {GenerateStage: "generator", ScoreStage: "embedder+classifier", EmbedStage: "embedder",
             ClassifyStage: "classifier"}
    return {roles[plan.stage]: plan.needs() for plan in ray_stages(spec)}


Published = Callable[[int, int], None]  # (shard index, rows) when a shard becomes visible
RowsWritten = Callable[[int], None]  # rows just written (not yet visible: their shard may be unfinished)


class _Execution:
    """What one execution over a run store shares: the pending shards' staging folders (left-overs
    of an interrupted attempt removed), the shard writer's arguments, a folder counting model
    loads (removed when the execution ends, however it ends) and which shards were reported."""

    def __init__(self, spec: AuditSpec, first_row_id: int, store: RunStore, shards: list[tuple[int, int, int]],
                 published: Published, rows_written: RowsWritten | None = None):
        self.store, self.published, self.rows_written = store, published, rows_written
        self.sizes = {index: stop - start for index, start, stop in shards}
        for index in self.sizes:
            store.begin_shard(index)
        self.writer = {"root": str(store.root.resolve()), "first_row_id": first_row_id,
                       "shard_rows": spec.run.shard_rows, "sizes": self.sizes}
        self.load_log = store.root.resolve() / ".loads" / uuid.uuid4().hex
        self.load_log.mkdir(parents=True)
        self.reported: set[int] = set()
        self.budget = FailureBudget(spec.run.max_failed_share, sum(self.sizes.values()))

    def __enter__(self) -> "_Execution":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.load_log, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.load_log.parent.rmdir()  # only when no other execution is counting in it

    def report(self, out: dict[str, np.ndarray]) -> None:
        """Tell the caller how many rows a write task wrote, and of each shard it published."""
        if self.rows_written is not None:
            self.rows_written(int(np.sum(out["rows"])))
        if "failed" in out and int(np.sum(out["failed"])):
            self.budget.add(int(np.sum(out["failed"])), next((str(r) for r in out["failure"] if r), ""))
        for shard, done in zip(out["shard"], out["published"]):
            if done and int(shard) not in self.reported:
                self.reported.add(int(shard))
                self.published(int(shard), self.sizes[int(shard)])

    def finish(self) -> dict[str, int]:
        """Publish from the driver any whole shard no writer published (on a shared file system a
        writer may not yet list the other writers' files), report the ones no message announced
        (a writer that published and died before returning), fail on an incomplete one; then the
        model loads per role."""
        writer = ShardWriter(**self.writer)
        for shard in sorted(set(self.sizes) - self.reported):
            if self.store.shard_dir(shard).exists() or writer.publish_if_whole(shard):
                self.reported.add(shard)
                self.published(shard, self.sizes[shard])
        missing = sorted(set(self.sizes) - self.reported)
        if missing:
            raise RunStoreError(f"the execution ended with shards {missing[:5]} of {self.store.rows_dir} incomplete; "
                                f"re-run the same command to write them")
        counts = {role: 0 for role, _ in STAGES}
        nodes: dict[str, set[str]] = {role: set() for role, _ in STAGES}
        for path in self.load_log.iterdir():
            role = path.name.split("-")[0]
            counts[role] += 1
            nodes[role].add(path.read_text())
        atomic_write_json(self.store.root / "nodes.json", {role: sorted(ids) for role, ids in nodes.items()})
        return counts


def _first_id(rows: pa.Table) -> int:
    return int(rows.column("row_id")[0].as_py())


def _stored_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """Stored rows as a stage batch: numpy columns, the embedding as (rows, dim); the old
    classifier's columns left out."""
    table = table.drop_columns([c for c in SCORES if c in table.column_names])
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names
             if name != "embedding"}
    emb = table.column("embedding").combine_chunks()
    batch["embedding"] = emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size)
    return batch


def write_rows(batch: dict[str, np.ndarray], writer: dict) -> dict[str, np.ndarray]:
    """The last step of an execution: the batch as run-store rows, into their shards; with each
    shard it touched, the rows written, whether it was published, and (on the first) the rows
    of the batch that failed and one reason."""
    written = ShardWriter(**writer).write(rows_table(batch))
    reasons = np.asarray(batch.get(FAILED, []), dtype=object)
    bad = reasons[reasons != ""]
    k = len(written)
    return {"shard": np.asarray([w[0] for w in written], np.int64), "rows": np.asarray([w[1] for w in written], np.int64),
            "published": np.asarray([w[2] for w in written], bool),
            "failed": np.asarray([len(bad)] + [0] * (k - 1), np.int64)[:k],
            "failure": np.asarray([bad[0] if len(bad) else ""] + [""] * (k - 1), dtype=object)[:k]}


class LocalExecutor:
    """Runs the stages in this process, each in chunks of its own batch size; models load on the
    first run and stay for the executor's life."""

    def __init__(self, spec: AuditSpec):
        self.spec = spec
        self.stages: list | None = None

    def run(self, rows: pa.Table, store: RunStore, shards: list[tuple[int, int, int]],
            published: Published = lambda *_: None, rows_written: RowsWritten | None = None) -> dict[str, int]:
        """Write the pending ``shards`` of ``rows``; returns the model loads per role."""
        with _Execution(self.spec, _first_id(rows), store, shards, published, rows_written) as execution:
            if self.stages is None:
                self.stages = [(getattr(self.spec, role).batch_size, cls(self.spec, str(execution.load_log)))
                               for role, cls in STAGES]
            for index, start, stop in shards:
                part = rows.slice(start, stop - start)
                batch = {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}
                for size, stage in self.stages:
                    batch = _in_chunks(stage, batch, size)
                # written as the Ray executor writes: a file per classifier batch
                for chunk in _chunks(batch, self.spec.classifier.batch_size):
                    execution.report(write_rows(chunk, execution.writer))
            return execution.finish()

    def rescore(self, sources: dict[int, list[str]], store: RunStore, shards: list[tuple[int, int, int]],
                published: Published = lambda *_: None, rows_written: RowsWritten | None = None) -> dict[str, int]:
        """Score the stored rows of ``sources`` (shard -> its part files in another run) with this
        spec's classifier into ``store``'s pending ``shards`` (a sweep)."""
        import pyarrow.parquet as pq

        first = min(r.start for r in store.planned().values())  # the grid's first row id, resumed or not
        with _Execution(self.spec, first, store, shards, published, rows_written) as execution:
            stage = RescoreStage(self.spec, str(execution.load_log))
            for index, _, _ in shards:
                batch = _stored_batch(pq.read_table(sources[index]))
                for chunk in _chunks(batch, self.spec.classifier.batch_size):
                    execution.report(write_rows(stage(chunk), execution.writer))
            return execution.finish()

    def close(self) -> None:
        """Drop the models and give their accelerator memory back (Ray actors free theirs on exit)."""
        import gc

        import torch

        self.stages = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class RayExecutor:
    """One Ray Data execution over every pending row: generate -> embed + filter -> classify ->
    rows written into their shards, streaming.

    Each model stage is an actor pool (``ActorPoolStrategy``) sized by the role's ``concurrency``,
    reserving the role's ``num_cpus`` / ``num_gpus`` per actor (fractions allowed); its actors
    load their model once for the whole execution. The embedder and the classifier share one
    pool when they share a device (``ray_stages``). Writing (PNG encoding, Parquet) runs as light
    tasks; each shard is published the moment its last rows are written, so an interrupted run
    keeps every whole shard and re-runs only the others.
    """

    def __init__(self, spec: AuditSpec, shipped: list[Path] = ()):
        self.spec, self.shipped = spec, list(shipped)

    def run(self, rows: pa.Table, store: RunStore, shards: list[tuple[int, int, int]],
            published: Published = lambda *_: None, rows_written: RowsWritten | None = None) -> dict[str, int]:
        """Write the pending ``shards`` of ``rows``; returns the model loads per role."""
        import ray

        spec = self.spec
        shipped = pack(self.shipped)  # once per execution, however many actors and nodes
        with _Execution(spec, _first_id(rows), store, shards, published, rows_written) as execution:
            pending = pa.concat_tables([rows.slice(start, stop - start) for _, start, stop in shards])
            first = spec.generator.batch_size
            # from_blocks takes each block's metadata here; from_arrow asks a remote task for it and
            # waits (about 3 s on a 2-core machine, a worker process started before anything streams)
            ds = ray.data.from_blocks([pending.slice(i, first) for i in range(0, pending.num_rows, first)])
            for plan in ray_stages(spec):
                ds = ds.map_batches(
                    plan.stage,
                    fn_constructor_kwargs={"spec": spec, "load_log": str(execution.load_log),
                                           "backends": registry.added(), "shipped": shipped},
                    batch_size=plan.batch_size,
                    batch_format="numpy",
                    compute=plan.pool(),
                    num_cpus=plan.num_cpus,
                    num_gpus=plan.num_gpus or None,
                    **plan.remote_args(),
                )
            ds = ds.map_batches(write_rows, fn_kwargs={"writer": execution.writer}, batch_format="numpy",
                                batch_size=spec.classifier.batch_size, num_cpus=0.25)
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                execution.report(out)
            return execution.finish()

    def rescore(self, sources: dict[int, list[str]], store: RunStore, shards: list[tuple[int, int, int]],
                published: Published = lambda *_: None, rows_written: RowsWritten | None = None) -> dict[str, int]:
        """Score the stored rows of ``sources`` (shard -> its part files in another run) with this
        spec's classifier into ``store``'s pending ``shards`` (a sweep): read, classify and write,
        streaming, the classifier an actor pool placed as the spec says."""
        import ray

        spec, cls = self.spec, self.spec.classifier
        shipped = pack(self.shipped)
        first = min(r.start for r in store.planned().values())  # the grid's first row id, resumed or not
        with _Execution(spec, first, store, shards, published, rows_written) as execution:
            files = [path for index, _, _ in shards for path in sources[index]]
            plan = _plan(RescoreStage, cls)
            ds = ray.data.read_parquet(files).map_batches(
                _stored_batch, batch_format="pyarrow", batch_size=cls.batch_size, num_cpus=0.25)
            ds = ds.map_batches(
                RescoreStage,
                fn_constructor_kwargs={"spec": spec, "load_log": str(execution.load_log), "backends": registry.added(),
                                       "shipped": shipped},
                batch_size=cls.batch_size, batch_format="numpy", compute=plan.pool(), num_cpus=plan.num_cpus,
                num_gpus=plan.num_gpus or None, **plan.remote_args())
            ds = ds.map_batches(write_rows, fn_kwargs={"writer": execution.writer}, batch_format="numpy",
                                batch_size=cls.batch_size, num_cpus=0.25)
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                execution.report(out)
            return execution.finish()

    def close(self) -> None:
        pass


def make_executor(spec: AuditSpec, shipped: list[Path] = ()) -> LocalExecutor | RayExecutor:
    """The spec's executor; ``shipped``: the cache files its actors need (roles' ``prepare``)."""
    return RayExecutor(spec, shipped) if spec.run.executor == "ray" else LocalExecutor(spec)
