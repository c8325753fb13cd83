"""Describe flagged slices in words.

An embedding captioner (retrieval) ranks phrases for a sample of a slice's images (up to
``EMBEDDING_SAMPLE``, failures first) against a sample of the rest of the run, in the embedder's
joint image-text space; an image captioner (transformers) captions a smaller sample the same
way. Only the sampled rows' embeddings or images are read, never a whole column. Rows the CLIP
filter marked invalid are left out.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc

from vbugs_ray.roles import registry
from vbugs_ray.spec import AuditSpec
from vbugs_ray.store import RunStore


def load_images(store: RunStore, row_ids: np.ndarray) -> np.ndarray:
    """Decoded images (N, H, W, 3) of the given rows, in the given order."""
    from PIL import Image

    wanted = [int(r) for r in row_ids]
    table = store.dataset().to_table(columns=["row_id", "image_png"], filter=pc.field("row_id").isin(wanted))
    by_id = dict(zip(table.column("row_id").to_pylist(), table.column("image_png").to_pylist()))
    return np.stack([np.asarray(Image.open(io.BytesIO(by_id[r])).convert("RGB")) for r in wanted])


EMBEDDING_SAMPLE = 2048  # rows per side (slice / rest) the retrieval captioner compares


def load_embeddings(store: RunStore, row_ids: np.ndarray) -> dict[int, np.ndarray]:
    """Embeddings of the given rows only (a filtered read, never the whole column)."""
    wanted = sorted({int(r) for r in row_ids})
    table = store.dataset().to_table(columns=["row_id", "embedding"], filter=pc.field("row_id").isin(wanted))
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)) if table.num_rows else []
    return dict(zip(table.column("row_id").to_pylist(), vectors))


def _sample(rows: np.ndarray, errors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` of ``rows``, failing rows first (they are what the caption must describe)."""
    failing, passing = rows[errors[rows]], rows[~errors[rows]]
    picked = rng.permutation(failing)[:k]
    return np.concatenate([picked, rng.permutation(passing)[: k - len(picked)]])


def caption_slices(flagged: list[dict], store: RunStore, spec: AuditSpec, features: list[str], top_k: int) -> None:
    """Add ``caption`` (phrases, best first) to the first ``top_k`` flagged slices, in place."""
    if spec.captioner is None or not flagged:
        return
    uses = registry.backend_class("captioner", spec.captioner.backend).uses
    names = store.dataset().schema.names
    table = store.read(columns=["row_id", "error", *features, *(["valid"] if "valid" in names else [])])
    if "valid" in names:
        table = table.filter(pc.fill_null(table.column("valid"), False))
    values = {name: table.column(name).to_numpy(zero_copy_only=False).astype(str) for name in features}
    errors = table.column("error").to_numpy(zero_copy_only=False).astype(bool)
    row_ids = table.column("row_id").to_numpy()
    rng = np.random.default_rng(spec.seed)
    plans = []  # (slice, its row mask) for the slices to caption
    for item in flagged[:top_k]:
        mask = np.ones(len(row_ids), bool)
        for name, value in item["predicates"].items():
            mask &= values[name] == value
        if mask.any() and not mask.all():
            plans.append((item, mask))
    if not plans:
        return
    if uses == "embeddings":
        captioner = registry.create_captioner(spec.captioner, spec, registry.create("embedder", spec.embedder, spec))
    else:
        captioner = registry.create_captioner(spec.captioner, spec)
    k = EMBEDDING_SAMPLE if uses == "embeddings" else captioner.images_per_slice
    sampled = []  # (slice, row ids inside, row ids outside)
    for item, mask in plans:
        inside = _sample(np.nonzero(mask)[0], errors, k, rng)
        outside = rng.permutation(np.nonzero(~mask)[0])[:k]
        sampled.append((item, row_ids[inside], row_ids[outside]))
    if uses == "embeddings":
        vectors = load_embeddings(store, np.concatenate([np.concatenate([a, b]) for _, a, b in sampled]))
        for item, inside, outside in sampled:
            item["caption"] = captioner.caption(np.stack([vectors[r] for r in inside]),
                                                np.stack([vectors[r] for r in outside]))
        return
    for item, inside, outside in sampled:
        item["caption"] = captioner.caption_images(load_images(store, inside), load_images(store, outside))


def _caption_task(flagged: list[dict], run_dir: str, spec_dict: dict, features: list[str]) -> list:
    """Runs in a Ray task on a node with the captioner's GPU; returns one caption (or None) per slice."""
    from vbugs_ray.spec import parse_spec

    caption_slices(flagged, RunStore(run_dir), parse_spec(spec_dict), features, len(flagged))
    return [item.get("caption") for item in flagged]


def caption_flagged(flagged: list[dict], store: RunStore, spec: AuditSpec, features: list[str], top_k: int,
                    progress=lambda _: None) -> None:
    """Caption the top flagged slices where the captioner belongs: with the Ray executor and a
    captioner that reserves GPUs (``captioner.num_gpus``), as a Ray task on a GPU node (a cluster
    job's driver often has none; the run directory must be on storage that node can read);
    otherwise in this process."""
    role = spec.captioner
    if role is None or not flagged:
        return
    if spec.run.executor != "ray" or role.num_gpus == 0:
        caption_slices(flagged, store, spec, features, top_k)
        return
    import ray

    from vbugs_ray.raycluster import ray_session

    with ray_session(spec, progress):
        task = ray.remote(num_gpus=role.num_gpus, num_cpus=role.num_cpus)(_caption_task)
        top = [dict(item) for item in flagged[:top_k]]
        captions = ray.get(task.remote(top, str(store.root.resolve()), spec.to_dict(), features))
    for item, caption in zip(flagged, captions):
        if caption:
            item["caption"] = caption
