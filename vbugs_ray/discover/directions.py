"""Failure directions (Jain et al., 2023): per class, the linear direction in embedding space along
which the model's errors concentrate.

Per class with at least ``min_errors`` failures and as many successes: L2-normalise the
embeddings (CLIP compares by angle), split them stratified by error, fit an L2 logistic regression
(``class_weight="balanced"``, so a rare error is not ignored) on the training part, and measure
its ROC AUC on the held-out part. The direction is the normalised coefficient vector *of that
split fit*, not a refit on all rows, so that the reported AUC is the held-out quality of exactly
the direction returned. ``rows`` are the class's rows (training and held-out) scoring highest; their
error rate is partly in-sample, so read ``auc`` as the honest number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import normalize

from vbugs_ray.discover.groups import as_inputs, thread_pool


@dataclass
class FailureDirection:
    """A class's failure direction and how well it separates errors from successes."""

    class_name: str
    direction: np.ndarray
    auc: float
    n_train: int
    n_test: int
    rows: np.ndarray
    error_rate: float
    class_error_rate: float

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Projection of the L2-normalised ``embeddings`` on the direction (higher: likelier to fail)."""
        return normalize(np.atleast_2d(np.asarray(embeddings, dtype=np.float64))) @ self.direction

    def to_dict(self) -> dict:
        """JSON-able summary (direction and rows omitted: they are arrays)."""
        return {"class_name": self.class_name, "auc": self.auc, "n_train": self.n_train, "n_test": self.n_test,
                "n_rows": int(len(self.rows)), "error_rate": self.error_rate,
                "class_error_rate": self.class_error_rate}


def failure_directions(embeddings: np.ndarray, errors: np.ndarray, classes: np.ndarray, *, test_share: float = 0.3,
                       top_share: float = 0.1, min_errors: int = 10, seed: int = 0) -> list[FailureDirection]:
    """One failure direction per class with enough failures and successes, highest held-out AUC first."""
    if not 0 < test_share < 1 or not 0 < top_share <= 1:
        raise ValueError("test_share must be in (0, 1) and top_share in (0, 1]")
    x, err, cls, _ = as_inputs(embeddings, errors, classes)
    found = []
    with thread_pool():
        for name in np.unique(cls):
            found.extend(_direction(x[cls == name], err[cls == name], np.flatnonzero(cls == name), str(name),
                                    test_share=test_share, top_share=top_share, min_errors=min_errors, seed=seed))
    return sorted(found, key=lambda d: (-d.auc, d.class_name))


def _direction(x, e, idx, name, *, test_share, top_share, min_errors, seed) -> list[FailureDirection]:
    """The one class's direction, or nothing when it has too few failures or successes."""
    if e.sum() < min_errors or (~e).sum() < min_errors:
        return []
    z = normalize(x)
    train, test = train_test_split(np.arange(len(idx)), test_size=test_share, stratify=e, random_state=seed)
    model = LogisticRegression(class_weight="balanced", max_iter=500).fit(z[train], e[train])
    auc = float(roc_auc_score(e[test], model.decision_function(z[test])))
    w = model.coef_[0]
    direction = w / np.linalg.norm(w) if np.linalg.norm(w) > 0 else w
    n_top = min(len(idx), max(math.ceil(top_share * len(idx)), min_errors))
    top = np.argsort(-(z @ direction), kind="stable")[:n_top]
    return [FailureDirection(class_name=name, direction=direction, auc=auc, n_train=len(train), n_test=len(test),
                             rows=np.sort(idx[top]).astype(np.int64), error_rate=float(e[top].mean()),
                             class_error_rate=float(e.mean()))]
