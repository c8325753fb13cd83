"""What each role must provide: one small interface per role, whatever the backend.

Images are uint8 arrays (N, H, W, 3); embeddings are float32 (N, D), unit length.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class Generator(Protocol):
    def generate(self, prompts: list[str], seeds: np.ndarray) -> np.ndarray:
        """One image per (prompt, seed); an image depends on its own prompt and seed only."""


class ReadingGenerator(Protocol):
    """A generator that reads a dataset instead of drawing (``reads_dataset = True``; see
    roles.generators._reading): it plans its own rows, each naming the image it shows."""

    reads_dataset: bool

    @classmethod
    def grid(cls, options: Any, spec: Any) -> Any:
        """The audit's rows (an Arrow table with ``source`` and ``data_error``), outside the held-out share."""

    @classmethod
    def held_out_rows(cls, options: Any, spec: Any, class_name: str, predicates: dict, excluded: tuple, n: int,
                      rng: np.random.Generator) -> dict[str, list]:
        """Up to ``n`` held-out images of the class showing the predicates: ``source`` and each axis."""

    def generate_rows(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The batch's images and, per row, why it has none ("" when it has one)."""


class ClassMapLike(Protocol):
    classes: list[str]
    output_names: np.ndarray
    class_of_output: np.ndarray

    def p_true(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray: ...

    def is_error(self, top1: np.ndarray, labels: np.ndarray) -> np.ndarray: ...


class Classifier(Protocol):
    class_map: ClassMapLike  # which of the model's outputs count for each spec class

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probabilities over the model's own outputs, (N, n_outputs)."""


class Embedder(Protocol):
    def embed_images(self, images: np.ndarray) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class RowSample(Protocol):
    """Rows of the run store that a captioner describes; each column is read only when asked."""

    row_ids: np.ndarray

    def images(self) -> np.ndarray: ...

    def embeddings(self) -> np.ndarray: ...


class Captioner(Protocol):
    sample_size: int  # rows per side (slice, reference) it wants to see

    @classmethod
    def sample_size_for(cls, options: Any) -> int:
        """``sample_size`` from the options alone: samples are drawn before any captioner is built
        (on Ray it lives in an actor)."""

    def caption(self, inside: RowSample, reference: RowSample) -> list[str]:
        """Phrases, best first, that describe what sets ``inside`` apart from ``reference``."""
