"""LLM2Loss (Ardeshir, 2023): learn embedding -> loss with light models, then read the loss of a
population described in words by feeding the model CLIP *text* embeddings.

An ensemble of light regressors, each fitted on a bootstrap resample of the training part, so that
the spread across members says where the estimate is unsupported (far from the images seen). The
members are small MLPs by default (one hidden layer, weight decay, early stopping; scikit-learn's
MLPRegressor), or ridge regressors: a failure in the middle of an attribute (medium-sized rings,
light clutter) is not a direction in embedding space, so a linear member cannot rank it (measured
on the toy world's planted bugs: benchmarks/RESULTS.md). Embeddings are used as given (CLIP's are
already unit norm): no normalisation here, so the modality-gap shift in ``score_texts`` is an
exact translation.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import spearmanr
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor

from vbugs_ray.discover.groups import thread_pool

MODELS = ("mlp", "ridge")


class DiagnosisEnsemble:
    """Bootstrap ensemble of ``members`` regressors (``model``: "mlp" with ``hidden`` units, or
    "ridge"; ``alpha`` is the weight penalty of either) from embedding to loss, with a held-out
    share ``holdout`` kept aside first to report ``r2`` and ``spearman``. Each member sees at most
    ``max_rows`` rows of its resample: enough to learn a loss surface, and it bounds the time."""

    def __init__(self, members: int = 8, model: str = "mlp", alpha: float | None = None, hidden: int = 64,
                 holdout: float = 0.2, max_rows: int = 4000, seed: int = 0):
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        alpha = (1e-2 if model == "mlp" else 1.0) if alpha is None else alpha
        if members < 1 or alpha < 0 or not 0 < holdout < 1 or hidden < 1 or max_rows < 10:
            raise ValueError("members >= 1, alpha >= 0, holdout in (0, 1), hidden >= 1 and max_rows >= 10 needed")
        self.members, self.model, self.alpha, self.hidden = members, model, alpha, hidden
        self.holdout, self.max_rows, self.seed = holdout, max_rows, seed
        self.models: list = []
        self.r2 = self.spearman = float("nan")
        self.n_train = self.n_test = 0
        self.held_out: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))  # (true, predicted) loss
        self.image_mean: np.ndarray | None = None

    def _member(self, index: int, rows: int):
        if self.model == "ridge":
            return Ridge(alpha=self.alpha)
        # a higher learning rate and a shorter patience than scikit-learn's defaults: the same
        # held-out Spearman and phrase ranks on the toy world's bugs, at less than half the time
        # batches no larger than the rows left after early stopping's 10% validation split
        return MLPRegressor(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, batch_size=max(1, min(256, int(rows * 0.9))),
                            learning_rate_init=3e-3, early_stopping=True, n_iter_no_change=5, max_iter=200,
                            random_state=(self.seed * 1000 + index) % 2**32)  # sklearn: < 2**32

    def fit(self, embeddings: np.ndarray, losses: np.ndarray) -> DiagnosisEnsemble:
        """Hold out a share, fit each member on a bootstrap resample of the rest, score the mean."""
        x = np.asarray(embeddings, dtype=np.float64)
        y = np.asarray(losses, dtype=np.float64).ravel()
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"embeddings must be (rows, dim) and losses (rows,), got {x.shape} and {y.shape}")
        if np.isnan(y).any():
            bad = np.flatnonzero(np.isnan(y))
            raise ValueError(f"losses are NaN in {bad.size} rows, e.g. rows {bad[:5].tolist()}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("embeddings and losses must be finite")
        train, test = train_test_split(np.arange(len(y)), test_size=self.holdout, random_state=self.seed)
        if len(test) < 3 or len(train) < 3:
            raise ValueError(f"{len(y)} rows are too few to hold out {self.holdout:.0%} and fit")
        rng = np.random.default_rng(self.seed)
        with thread_pool(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: still a usable member
            self.models = []
            for index in range(self.members):
                resample = rng.choice(train, size=min(len(train), self.max_rows), replace=True)
                self.models.append(self._member(index, len(resample)).fit(x[resample], y[resample]))
        self.image_mean = x[train].mean(axis=0)
        pred, _ = self.predict(x[test])
        self.r2 = float(r2_score(y[test], pred))
        self.spearman = float(spearmanr(y[test], pred).statistic)
        self.n_train, self.n_test = len(train), len(test)
        self.held_out = (y[test], pred)
        return self

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and spread (std across members) of the predicted loss."""
        if not self.models:
            raise ValueError("DiagnosisEnsemble is not fitted")
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        with thread_pool():
            preds = np.stack([m.predict(x) for m in self.models])
        return preds.mean(axis=0), preds.std(axis=0)

    def score_texts(self, text_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted loss of the populations that text embeddings describe, and the spread.

        CLIP's text embeddings sit apart from its image embeddings (the modality gap), so each one is
        shifted by (mean image embedding seen in fit - mean of the given text embeddings) first: the
        phrases are compared with each other at the level of the images. The result compares
        phrases, not absolute losses (their mean is the loss at the image mean), needs several
        phrases (one phrase maps onto the image mean), and is unchanged by any offset common to all
        text embeddings; for a linear member the ranking would not depend on the shift anyway.
        """
        t = np.atleast_2d(np.asarray(text_embeddings, dtype=np.float64))
        if self.image_mean is None:
            raise ValueError("DiagnosisEnsemble is not fitted")
        return self.predict(t + (self.image_mean - t.mean(axis=0)))

    def summary(self, points: int = 0) -> dict:
        """Fit and held-out scores; with ``points``, also up to that many held-out (true,
        predicted) loss pairs, for the report's plot of how far the ensemble can be trusted."""
        out = {"model": self.model, "members": self.members, "r2": self.r2, "spearman": self.spearman,
               "n_train": self.n_train, "n_test": self.n_test}
        if points:
            true, predicted = (np.round(a[:points], 4).tolist() for a in self.held_out)
            out["held_out"] = {"true_loss": true, "predicted_loss": predicted}
        return out


def rank_phrases(ensemble: DiagnosisEnsemble, phrases: list[str], text_embeddings: np.ndarray) -> list[dict]:
    """Phrases with their predicted loss and spread, highest predicted loss first."""
    if len(phrases) != len(np.atleast_2d(text_embeddings)):
        raise ValueError(f"{len(phrases)} phrases but {len(np.atleast_2d(text_embeddings))} text embeddings")
    loss, spread = ensemble.score_texts(text_embeddings)
    order = np.argsort(-loss, kind="stable")
    return [{"phrase": phrases[i], "predicted_loss": float(loss[i]), "spread": float(spread[i])} for i in order]


MIN_CLASS_ROWS = 40  # rows with a finite loss a class needs for an ensemble of its own


def fit_finite(embeddings: np.ndarray, losses: np.ndarray, seed: int = 0, **options) -> DiagnosisEnsemble:
    """One ensemble over the rows whose loss is finite (rows the filter rejected have NaN)."""
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    return DiagnosisEnsemble(seed=seed, **options).fit(np.asarray(embeddings)[finite], losses[finite])


def fit_per_class(embeddings: np.ndarray, losses: np.ndarray, classes: np.ndarray, min_rows: int = MIN_CLASS_ROWS,
                  seed: int = 0, **options) -> dict[str, DiagnosisEnsemble]:
    """One ensemble per class over the class's rows with a finite loss (classes with fewer than
    ``min_rows`` such rows get none): a bug is one class's failure, and one ensemble over every
    class spends its capacity on which classes are hard."""
    losses = np.asarray(losses, dtype=np.float64)
    classes = np.asarray(classes)
    out = {}
    for name in dict.fromkeys(classes.tolist()):
        rows = np.flatnonzero((classes == name) & np.isfinite(losses))
        if len(rows) >= min_rows:
            out[str(name)] = DiagnosisEnsemble(seed=seed, **options).fit(embeddings[rows], losses[rows])
    return out
