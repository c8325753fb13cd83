"""Captioner backend ``retrieval``: describes a set of images by ranking candidate phrases.

As in Domino: a phrase scores by how much closer, in the embedder's joint image-text space, it
is to the set's images than to a reference set's images (standardised per phrase). Candidates default to the spec's own
vocabulary (class names and axis phrases), so captions use words the generator understands.
"""

from __future__ import annotations

import numpy as np

from vbugs_ray.spec import SpecError

OPTIONS = ("top_phrases",)


def candidate_phrases(spec) -> list[str]:
    phrases = list(spec.classes)
    for axis in spec.axes:
        phrases.extend(axis.phrases)
    return list(dict.fromkeys(phrases))


def rank_phrases(set_embeddings: np.ndarray, reference_embeddings: np.ndarray, phrase_embeddings: np.ndarray
                 ) -> np.ndarray:
    """Score of each phrase: how far its similarity to the set's images exceeds its similarity to
    the reference images, in units of the phrase's own spread (a standardised mean difference,
    so phrases whose similarities live on different scales compare fairly)."""
    phrases = np.asarray(phrase_embeddings, np.float64)
    inside = np.asarray(set_embeddings, np.float64) @ phrases.T
    outside = np.asarray(reference_embeddings, np.float64) @ phrases.T
    spread = np.sqrt((inside.var(axis=0) + outside.var(axis=0)) / 2) + 1e-6
    return (inside.mean(axis=0) - outside.mean(axis=0)) / spread


class RetrievalCaptioner:
    OPTIONS = OPTIONS  # option keys the registry accepts for this backend
    uses = "embeddings"  # caption.py hands it the run's CLIP embeddings

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        top = role_spec.options.get("top_phrases", 3)
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise SpecError("captioner.options.top_phrases", f"expected an integer >= 1; got {top!r}")

    def __init__(self, role_spec, spec, embedder):
        self.top = role_spec.options.get("top_phrases", 3)
        self.phrases = candidate_phrases(spec)
        self.phrase_embeddings = embedder.embed_texts(self.phrases)

    def caption(self, set_embeddings: np.ndarray, reference_embeddings: np.ndarray) -> list[str]:
        """The ``top_phrases`` phrases that set the images apart from the reference, best first."""
        scores = rank_phrases(set_embeddings, reference_embeddings, self.phrase_embeddings)
        return [self.phrases[i] for i in np.argsort(-scores)[: self.top]]
