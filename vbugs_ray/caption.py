"""Describe flagged slices in words: the captioner ranks phrases for each slice's images against
the rest of the run, in the embedder's joint image-text space."""

from __future__ import annotations

import numpy as np

from vbugs_ray.roles import registry
from vbugs_ray.spec import AuditSpec


def caption_slices(flagged: list[dict], columns: dict[str, np.ndarray], embeddings: np.ndarray,
                   spec: AuditSpec, top_k: int) -> None:
    """Add ``caption`` (phrases, best first) to the first ``top_k`` flagged slices, in place."""
    if spec.captioner is None or not flagged:
        return
    embedder = registry.create("embedder", spec.embedder, spec)
    captioner = registry.create_captioner(spec.captioner, spec, embedder)
    for item in flagged[:top_k]:
        mask = np.ones(len(embeddings), bool)
        for name, value in item["predicates"].items():
            mask &= columns[name].astype(str) == value
        if mask.all() or not mask.any():
            continue
        item["caption"] = captioner.caption(embeddings[mask], embeddings[~mask])
