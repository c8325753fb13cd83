"""Captioner backend ``retrieval``: describes a set of images by ranking candidate phrases.

As in Domino: a phrase scores by how much closer, in the embedder's joint image-text space, it
is to the set's images than to a reference set's images (standardised per phrase). Candidates
are the audit's vocabulary (roles.vocabulary: class names, axis phrases, the generator's own words,
the user's list), so captions use words the generator understands. It reads the run's stored
image embeddings; the embedder is used only to embed the phrases. Options: ``top_phrases`` (3),
``min_score`` (0.3: a phrase must set the images apart by at least this standardised difference,
so that a set that differs in nothing gets no caption rather than three random words).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vbugs_ray.fields import option
from vbugs_ray.roles.vocabulary import candidate_phrases

SAMPLE_SIZE = 2048  # rows per side (slice / reference) whose embeddings are compared


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
    @dataclass(frozen=True)
    class Options:
        top_phrases: int = option(3, kind=int, low=1)
        min_score: float = option(0.3, kind=float)

    sample_size = SAMPLE_SIZE

    @classmethod
    def sample_size_for(cls, options) -> int:
        return SAMPLE_SIZE

    def __init__(self, options, role_spec, spec, embedder):
        self.top, self.min_score = options.top_phrases, options.min_score
        self.phrases = candidate_phrases(spec)
        self.phrase_embeddings = embedder.embed_texts(self.phrases)

    def rank(self, set_embeddings: np.ndarray, reference_embeddings: np.ndarray) -> list[str]:
        """The ``top_phrases`` phrases that set the embeddings apart from the reference, best first."""
        scores = rank_phrases(set_embeddings, reference_embeddings, self.phrase_embeddings)
        return [self.phrases[i] for i in np.argsort(-scores)[: self.top] if scores[i] >= self.min_score]

    def caption(self, inside, reference) -> list[str]:
        return self.rank(inside.embeddings(), reference.embeddings())
