"""Free phrases on a dataset: the held-out images the embedder places nearest a description.

A dataset shows what its images show. "star, at night" on a folder without a lighting column
cannot be drawn, only found. So before a round that tests a phrase, each (class, axis values)
the phrase arms name gets a *pool*: up to ``POOL_FACTOR`` x images_per_hypothesis of its held-out
images showing those values, read, embedded and scored once through the pipeline
(``round-N/pool/``). A phrase arm is then the ``SHARE`` of its pool that lies furthest along the
text direction from the class's prompts to the same prompts with the phrases appended (paired
prompt ensembles, so the direction holds the phrases and nothing else), at most
images_per_hypothesis. The ranking is within cells (the pool's images with the same open axis
values): each cell gives about SHARE of its images, those furthest along the direction, so a
phrase is not verified for what a known axis does ("in fog" picking the severely blurred
images); without axes, the class is one cell. The
round scores the chosen images again with the pool's seeds: the same pixels, corruptions
included.

The null each such test keeps (``verdicts.one_sided_p``, one-sided Fisher, BH over the round):
the class's held-out images the embedder ranks nearest the description fail no more often than
its held-out images at random. The selection reads embeddings only, never the classifier's
output, and the held-out images are disjoint from the audit that proposed the phrase, so the
test is not circular; an arm overlapping the base arm makes Fisher's test conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vbugs_ray.spec import AuditSpec
from vbugs_ray.verify.hypotheses import Hypothesis, draw_prompts

POOL_FACTOR = 4  # pool rows per class, in images_per_hypothesis: a quarter of them fills an arm
SHARE = 0.25  # of a class's matching pool rows, the part nearest the description that forms an arm
PROMPTS = 16  # prompts per side of a text direction
POOL = "pool:"  # a pool row's ``hypothesis``: pool:<class>
POOL_ROUND = 1_000_000  # round N's pool draws from seed stream POOL_ROUND + N, apart from the rounds'


def phrase_arms(tests: list[Hypothesis]) -> list[Hypothesis]:
    """The descriptions a round must find by retrieval: the tests with phrases and their
    complements' references (which carry the same phrases)."""
    arms = [h for h in tests if h.phrases]
    return arms + [h.reference for h in arms if h.reference is not None]


def pool_of(h: Hypothesis) -> Hypothesis:
    """What a phrase arm's pool shows: its class and axis values, no phrase (exclusions are
    applied when the arm is chosen)."""
    return Hypothesis(h.class_name, h.predicates)


def pools_needed(tests: list[Hypothesis]) -> list[Hypothesis]:
    """One pool per distinct (class, axis values) of the round's phrase arms, in test order."""
    return list({pool_of(h).key: pool_of(h) for h in phrase_arms(tests)}.values())


@dataclass
class Pool:
    """A round's pool rows that passed the pipeline (valid), with unit-length embeddings."""

    source: np.ndarray
    seed: np.ndarray
    pools: np.ndarray  # each row's pool: POOL + pool_of(h).key
    values: dict[str, np.ndarray]
    embeddings: np.ndarray

    @classmethod
    def of(cls, table: pa.Table | None, axes: tuple[str, ...]) -> "Pool":
        """From the pool's stored rows; ``None``: no held-out image to pool."""
        if table is None:
            none = np.zeros(0, dtype=object)
            return cls(none, np.zeros(0, np.int64), none, {a: none for a in axes}, np.zeros((0, 1)))
        valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
        table = table.filter(pa.array(valid))
        emb = table.column("embedding").combine_chunks()
        width = emb.type.list_size if table.num_rows else 1
        embeddings = emb.flatten().to_numpy().reshape(table.num_rows, width).astype(np.float64)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)

        def col(name: str) -> np.ndarray:
            return np.asarray(table.column(name).to_pylist(), dtype=object)

        return cls(col("source"), table.column("seed").to_numpy().astype(np.int64), col("hypothesis"),
                   {a: col(a) for a in axes}, embeddings)


def text_direction(spec: AuditSpec, embedder: Any, h: Hypothesis) -> np.ndarray:
    """Unit vector from the class's prompts (its predicates fixed) to the same prompts with the
    phrases appended: each side the normalised mean of PROMPTS embedded prompts, drawn with one
    seed so that the two sides differ by the phrases only."""
    sides = []
    for phrases in (h.phrases, ()):
        rng = np.random.default_rng([spec.seed, 4243])
        prompts = draw_prompts(spec, h.class_name, dict(h.predicates), phrases, rng, PROMPTS, h.excluded)[0]
        emb = np.asarray(embedder.embed_texts(prompts), np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        mean = emb.mean(axis=0)
        sides.append(mean / max(np.linalg.norm(mean), 1e-12))
    direction = sides[0] - sides[1]
    return direction / max(np.linalg.norm(direction), 1e-12)


def nearest(pool: Pool, h: Hypothesis, direction: np.ndarray, n: int) -> dict[str, list]:
    """The arm's rows: of its pool's rows (none of its exclusions), the SHARE of each cell
    furthest along ``direction`` (at most ``n`` in all), best first."""
    match = pool.pools == POOL + pool_of(h).key
    for axis, value in h.excluded:
        match &= pool.values[axis] != value
    candidates = np.flatnonzero(match)
    k = min(n, math.ceil(SHARE * len(candidates)))
    if not k:
        return {"source": [], "seed": [], **{axis: [] for axis in pool.values}}
    score = pool.embeddings[candidates] @ direction
    cells = np.unique(np.stack([pool.values[a][candidates].astype(str) for a in pool.values], axis=1), axis=0,
                      return_inverse=True)[1].reshape(-1) if pool.values else np.zeros(len(candidates), np.int64)
    # within its cell: the share of the cell's images ranked below it (each cell gives about SHARE
    # of its images), ties across cells broken by the distance above the cell's mean
    sizes = np.bincount(cells)
    order = np.lexsort((-score, cells))
    rank = np.empty(len(score), np.int64)
    rank[order] = np.arange(len(score)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    below = 1.0 - (rank + 0.5) / sizes[cells]
    centred = score - (np.bincount(cells, weights=score) / sizes)[cells]
    chosen = candidates[np.lexsort((-centred, -below))[:k]]
    return {"source": pool.source[chosen].tolist(), "seed": pool.seed[chosen].tolist(),
            **{axis: values[chosen].tolist() for axis, values in pool.values.items()}}


def retriever(spec: AuditSpec, pool: Pool, embedder: Any):
    """``(h, n) -> columns`` of a phrase arm (``nearest``), each direction embedded once."""
    directions: dict[str, np.ndarray] = {}

    def rows(h: Hypothesis, n: int) -> dict[str, list]:
        if h.key not in directions:
            directions[h.key] = text_direction(spec, embedder, h)
        return nearest(pool, h, directions[h.key], n)

    return rows
