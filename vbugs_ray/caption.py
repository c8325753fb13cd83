"""Describe flagged slices in words.

For each slice to describe, a sample of its rows (failures first) and a sample of the rest of
the run (``captioner.sample_size`` each) are handed to the captioner as ``StoredRows``: it reads
the columns it needs (the retrieval captioner: stored embeddings; an image captioner: decoded
images), and each column is read once for every sample together, never as a whole column. Rows
the CLIP filter marked invalid are left out.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vbugs_ray.roles import registry
from vbugs_ray.roles.protocols import Captioner
from vbugs_ray.spec import AuditSpec, node_needs, pinning
from vbugs_ray.store import RunStore
from vbugs_ray.shipping import pack, unpacked
from vbugs_ray.terminal import open_bar


class _ColumnReader:
    """Reads a column for the union of every sample's rows the first time any sample asks."""

    def __init__(self, store: RunStore):
        self.store, self.wanted, self.cache = store, set(), {}

    def add(self, row_ids: np.ndarray) -> None:
        self.wanted.update(int(r) for r in row_ids)

    def values(self, column: str, row_ids: np.ndarray) -> list[Any]:
        if column not in self.cache:
            ids = sorted(self.wanted)
            table = self.store.dataset().to_table(columns=["row_id", column], filter=pc.field("row_id").isin(ids))
            values = table.column(column).combine_chunks()
            if pa.types.is_fixed_size_list(values.type):  # embeddings: one numpy row each
                values = values.flatten().to_numpy().reshape(len(values), values.type.list_size)
            else:
                values = values.to_pylist()
            self.cache[column] = dict(zip(table.column("row_id").to_pylist(), values))
        return [self.cache[column][int(r)] for r in row_ids]


class StoredRows:
    """Rows of the run store a captioner describes (roles.protocols.RowSample)."""

    def __init__(self, row_ids: np.ndarray, reader: _ColumnReader):
        self.row_ids, self._reader = np.asarray(row_ids, np.int64), reader
        reader.add(self.row_ids)

    def embeddings(self) -> np.ndarray:
        return np.asarray(self._reader.values("embedding", self.row_ids), np.float32)

    def images(self) -> np.ndarray:
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                         for png in self._reader.values("image_png", self.row_ids)])


class _LazyEmbedder:
    """The spec's embedder, built only if a captioner embeds something (the retrieval captioner
    embeds its phrases; an image captioner never does)."""

    def __init__(self, spec: AuditSpec):
        self.spec, self._embedder = spec, None

    def __getattr__(self, name: str) -> Any:
        if self._embedder is None:
            self._embedder = registry.create("embedder", self.spec.embedder, self.spec)
        return getattr(self._embedder, name)


def _sample(rows: np.ndarray, errors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` of ``rows``, failing rows first (they are what the caption must describe)."""
    failing, passing = rows[errors[rows]], rows[~errors[rows]]
    picked = rng.permutation(failing)[:k]
    return np.concatenate([picked, rng.permutation(passing)[: k - len(picked)]])


def sample_size(spec: AuditSpec) -> int:
    """Rows per side the spec's captioner wants, without building it."""
    cls = registry.backend_class("captioner", spec.captioner.backend)
    return int(cls.sample_size_for(registry.options_of("captioner", spec.captioner)))


def caption_slices(flagged: list[dict], store: RunStore, spec: AuditSpec, features: list[str], top_k: int,
                   progress=lambda _: None) -> None:
    """Add ``caption`` (phrases, best first) to the first ``top_k`` flagged slices, in place."""
    if spec.captioner is None or not flagged:
        return
    table = store.read_valid(["row_id", "error", *features])
    values = {name: table.column(name).to_numpy(zero_copy_only=False).astype(str) for name in features}
    errors = table.column("error").to_numpy(zero_copy_only=False).astype(bool)
    row_ids = table.column("row_id").to_numpy()
    plans = []  # (slice, its row mask) for the slices to caption
    for item in flagged[:top_k]:
        mask = np.ones(len(row_ids), bool)
        for name, value in item["predicates"].items():
            mask &= values[name] == value
        if mask.any() and not mask.all():
            plans.append((item, mask))
    if not plans:
        return
    rng = np.random.default_rng(spec.seed)
    k = sample_size(spec)
    sets = [(row_ids[_sample(np.nonzero(mask)[0], errors, k, rng)], row_ids[rng.permutation(np.nonzero(~mask)[0])[:k]])
            for _, mask in plans]
    for (item, _), caption in zip(plans, caption_sets(store, spec, sets, progress=progress)):
        item["caption"] = caption


class RowCaptioner:
    """The spec's captioner over rows of the run store: ``caption`` takes (inside, reference)
    pairs of row ids and returns, for each, the phrases that set ``inside`` apart. Columns are
    read once for all pairs of a call. ``embedder``: the spec's embedder if the caller already
    holds one (else built only if the captioner embeds something)."""

    def __init__(self, store: RunStore, spec: AuditSpec, embedder: Any = None):
        self.store = store
        self.captioner: Captioner = registry.create("captioner", spec.captioner, spec,
                                                    embedder=embedder if embedder is not None else _LazyEmbedder(spec))

    def caption(self, sets: list[tuple[np.ndarray, np.ndarray]]) -> list[list[str]]:
        reader = _ColumnReader(self.store)
        samples = [(StoredRows(inside, reader), StoredRows(reference, reader)) for inside, reference in sets]
        return [self.captioner.caption(inside, reference) for inside, reference in samples]


class CaptionStage:
    """Ray Data actor holding the spec's captioner; a batch is a list of (inside, reference)
    row-id sets, read from the run store (which the actor's node must be able to read)."""

    def __init__(self, spec: AuditSpec, run_dir: str, backends: dict | None = None, shipped: dict | None = None):
        from vbugs_ray.pipeline import limit_threads

        registry.adopt(backends)  # backends the driver registered (vbugs_ray.register_backend)
        limit_threads(spec.captioner)
        with unpacked(shipped):  # the driver's trained weights (the embedder's), on this node
            self.rows = RowCaptioner(RunStore(run_dir), spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sets = [(np.asarray(inside, np.int64), np.asarray(reference, np.int64))
                for inside, reference in zip(batch["inside"], batch["reference"])]
        captions = [json.dumps(c) for c in self.rows.caption(sets)]
        return {"index": np.asarray(batch["index"]), "caption": np.asarray(captions, dtype=object)}


def caption_sets(store: RunStore, spec: AuditSpec, sets: list[tuple[np.ndarray, np.ndarray]],
                 embedder: Any = None, progress=lambda _: None) -> list[list[str]]:
    """Captions of (inside, reference) row-id sets where the spec's models run: with the Ray
    executor, a Ray Data actor pool of the captioner like the model stages (``concurrency``
    actors, each reserving the role's ``num_cpus`` / ``num_gpus``, so a GPU captioner lands on a
    GPU node; the run directory must be on storage that node can read); otherwise in this process
    (reusing ``embedder`` when the caller holds one)."""
    if not sets:
        return []
    role = spec.captioner
    if spec.run.executor != "ray":
        return RowCaptioner(store, spec, embedder).caption(sets)
    import ray

    from vbugs_ray.raycluster import ray_session

    items = [{"index": i, "inside": [int(r) for r in inside], "reference": [int(r) for r in reference]}
             for i, (inside, reference) in enumerate(sets)]
    needs = node_needs(role.num_cpus, role.num_gpus, role.accelerator_type, role.resources)
    with ray_session(spec.run, progress, {"captioner": needs}):
        shipped = pack(registry.prepare_all(spec, progress, roles=("embedder", "captioner")))
        ds = ray.data.from_items(items).map_batches(
            CaptionStage,
            fn_constructor_kwargs={"spec": spec, "run_dir": str(store.root.resolve()), "backends": registry.added(),
                                   "shipped": shipped},
            batch_size=-(-len(items) // role.concurrency),  # one batch per actor: columns are read once per batch
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(role.concurrency, len(items))),
            num_cpus=role.num_cpus,
            num_gpus=role.num_gpus or None,
            **pinning(role.accelerator_type, role.resources),
        )
        captions = {}
        with open_bar(progress, "captions", len(items), unit="slice") as bar:
            for row in ds.iter_rows():
                captions[int(row["index"])] = json.loads(row["caption"])
                bar.update(1)
    return [captions[i] for i in range(len(sets))]

