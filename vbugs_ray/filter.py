"""The CLIP filter (Dataset Interfaces): is the class, and the shift, really in the picture?

A text-to-image model sometimes draws the wrong thing (no dog at all, or no snow); a classifier
that "fails" on such an image has no bug. Each row gets its image's similarity to the class
prompt ("a photo of a {class}") and to each axis's shift prompt ("a photo {phrase}"); a row under
a threshold is kept, marked ``valid = False`` with the reasons, and left out of the slice
statistics, so a generation failure is never reported as a classifier failure.
"""

from __future__ import annotations

import numpy as np

from vbugs_ray.spec import AuditSpec


class ClipFilter:
    def __init__(self, spec: AuditSpec, embedder):
        fs = spec.filter
        self.settings = fs
        self.class_embeddings = embedder.embed_texts([fs.class_prompt.replace("{class}", c) for c in spec.classes])
        self.axes = [(axis.name, {v: i for i, v in enumerate(axis.values)},
                      embedder.embed_texts([fs.shift_prompt.replace("{phrase}", p) for p in axis.phrases]))
                     for axis in spec.axes]

    def __call__(self, batch: dict[str, np.ndarray], image_embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """class_similarity, shift_similarity (the lowest over axes), valid, filter_reason."""
        fs = self.settings
        n = len(image_embeddings)
        labels = np.asarray(batch["label"], np.int64)
        rows = np.arange(n)
        class_sims = image_embeddings @ self.class_embeddings.T
        own = class_sims[rows, labels]
        reasons: list[list[str]] = [[] for _ in range(n)]
        if fs.min_class_similarity is not None:
            for i in np.nonzero(own < fs.min_class_similarity)[0]:
                reasons[i].append("class_similarity")
        if fs.class_top_k is not None:
            rank = (class_sims > own[:, None]).sum(axis=1)  # classes the image looks more like
            for i in np.nonzero(rank >= fs.class_top_k)[0]:
                reasons[i].append("class_rank")
        shift = np.full(n, np.inf)
        for name, index, texts in self.axes:
            # a value not on the axis (a dataset row missing it, already marked invalid) is scored as the first
            values = np.array([index.get(str(v), 0) for v in batch[name]], np.int64)
            sims = np.einsum("nd,nd->n", image_embeddings, texts[values])
            shift = np.minimum(shift, sims)
            if fs.min_shift_similarity is not None:
                for i in np.nonzero(sims < fs.min_shift_similarity)[0]:
                    reasons[i].append(f"shift:{name}")
        return {
            "class_similarity": own.astype(np.float32),
            "shift_similarity": shift.astype(np.float32),
            "valid": np.array([not r for r in reasons]),
            "filter_reason": np.array([",".join(r) for r in reasons], dtype=object),
        }
