"""Failure discovery over plain arrays (numpy, scipy, sklearn only; no Ray, torch or I/O), so it
runs anywhere the embeddings, errors and losses of an audit have been gathered:

- ``groups``: Domino-style error-aware failure groups per class;
- ``directions``: failure directions (Jain et al., 2023) per class;
- ``diagnosis``: LLM2Loss, an embedding -> loss ensemble that can score text phrases.
"""

from vbugs_ray.discover.diagnosis import DiagnosisEnsemble, rank_phrases
from vbugs_ray.discover.directions import FailureDirection, failure_directions
from vbugs_ray.discover.groups import FailureGroup, choose_k, failure_groups

__all__ = ["DiagnosisEnsemble", "FailureDirection", "FailureGroup", "choose_k", "failure_directions",
           "failure_groups", "rank_phrases"]
