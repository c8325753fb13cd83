"""Domino-style failure groups: per class, regions of embedding space where the model fails more.

Domino (Eyuboglu et al., 2022) clusters embeddings with the error appended, so that the partition
follows the errors as well as the images. Here, per class:

1. ``Z`` = the class's L2-normalised embeddings (CLIP compares by angle).
2. ``k`` in ``1..max_k`` = argmin of the BIC of a full-covariance Gaussian mixture (sklearn
   ``GaussianMixture``) fitted to the top 8 principal components of ``Z`` alone, on at most
   ``bic_rows`` rows (``choose_k`` says why this mixture). The error column is
   kept out of this choice on purpose: with it, a class whose errors are pure noise would still
   "gain" a component made of its failures, and every class would yield a spurious group. A
   single Gaussian cloud therefore gives ``k = 1`` (no group); ``k`` grows only with real
   structure in the images.
3. At that ``k``, k-means on ``[Z, error_weight * s * error]`` (``s`` = the class's RMS distance to
   its mean, so the weight is relative to the spread and means the same for every class): the
   error column steers the boundaries towards where the failures are.
4. Membership: each row goes to the nearest cluster centre in embedding space (the error column
   dropped). A group is then a region of embedding space, applicable to rows whose error is not
   known, and its error rate is not inflated by the error column pulling failures in.

Groups whose error rate exceeds the class's and that hold at least ``min_errors`` failures are
returned, most severe first: severity = failures in the group x lift (lift = group error rate /
class error rate), i.e. failures weighted by how concentrated they are.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits  # sklearn's own dependency

THREADS = 1  # BLAS/OpenMP threads for discovery; see thread_pool
BIC_DIMS = 8  # principal components the k-selection mixture sees
MIN_ENRICHMENT = 0.1  # an overlap value must be this much commoner among the group's failures


@dataclass
class FailureGroup:
    """One group of a class's rows (failing and passing) where the error rate is raised."""

    class_name: str
    rows: np.ndarray
    n: int
    errors: int
    error_rate: float
    class_error_rate: float
    top_wrong: list[tuple[str, int]] = field(default_factory=list)
    overlaps: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def lift(self) -> float:
        return self.error_rate / self.class_error_rate if self.class_error_rate > 0 else float("inf")

    @property
    def severity(self) -> float:
        """The sort key: failures in the group x lift."""
        return self.errors * self.lift

    def to_dict(self) -> dict:
        """JSON-able summary (rows omitted: they can be millions of indices)."""
        return {"class_name": self.class_name, "n": self.n, "errors": self.errors,
                "error_rate": self.error_rate, "class_error_rate": self.class_error_rate,
                "lift": self.lift, "severity": self.severity,
                "top_wrong": [[name, count] for name, count in self.top_wrong],
                "overlaps": {k: dict(v) for k, v in self.overlaps.items()}}


def thread_pool():
    """Limit BLAS/OpenMP to ``THREADS`` threads for a discovery call.

    Audits run beside Ray workers on busy machines; there, thread pools that spin waiting for
    busy cores cost far more than they gain: on the shared 2-core development machine (load 5-10)
    benchmarks/bench_discover.py took 59 s with 2 threads and 17 s with 1 (100k x 512).
    Set ``groups.THREADS`` higher on an idle machine.
    """
    return threadpool_limits(THREADS)


def as_inputs(embeddings, errors, classes, **aligned) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Check shapes and values once, so that a wrong input fails here with a one-line message."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (rows, dim), got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"embeddings have non-finite values in {bad.size} rows, e.g. rows {bad[:5].tolist()}")
    e = np.asarray(errors)
    if e.dtype != bool:
        if not np.isin(e, (0, 1)).all():
            raise ValueError("errors must be boolean (or 0/1)")
        e = e.astype(bool)
    c = np.asarray(classes)
    out = {}
    for name, value in {"errors": e, "classes": c, **aligned}.items():
        if value is not None and len(value) != len(x):
            raise ValueError(f"{name} has {len(value)} rows, embeddings have {len(x)}")
    for name, value in aligned.items():
        out[name] = None if value is None else np.asarray(value)
    return x, e, c, out


def choose_k(z: np.ndarray, max_k: int, *, bic_rows: int = 3000, seed: int = 0) -> tuple[int, list[float]]:
    """``k`` in ``1..max_k`` minimising the BIC of a full-covariance Gaussian mixture fitted to the top
    ``BIC_DIMS`` principal components of ``z`` (at most ``bic_rows`` rows, drawn with ``seed``);
    returns ``(k, bics)``.

    Error-blind (see the module). Principal components, because the means of ``k`` clusters span
    ``k - 1`` dimensions, so strong cluster structure shows in the top components, and a full
    covariance there costs few parameters. Full, because a spherical mixture in the raw embedding
    space splits a single elongated cloud (real classes are far from isotropic) into many parts.
    One thread whatever ``THREADS`` says: the matrices are tiny, and on a shared machine a thread
    pool spinning for cores that are busy elsewhere made this step 50-100x slower.
    """
    rng = np.random.default_rng(seed)
    sample = z if len(z) <= bic_rows else z[np.sort(rng.choice(len(z), bic_rows, replace=False))]
    bics = []
    with threadpool_limits(1), warnings.catch_warnings():  # tiny matrices: one thread always
        warnings.simplefilter("ignore", ConvergenceWarning)  # an unconverged fit's BIC still ranks k fairly
        dims = min(BIC_DIMS, sample.shape[1], len(sample) - 1)
        p = PCA(dims, random_state=seed).fit_transform(sample) if dims >= 1 else sample
        for k in range(1, min(max_k, len(sample)) + 1):
            gm = GaussianMixture(k, covariance_type="full", max_iter=50, random_state=seed)
            bics.append(float(gm.fit(p).bic(p)))
    return int(np.argmin(bics)) + 1, bics


def _top_wrong(predictions: np.ndarray) -> list[tuple[str, int]]:
    counts = Counter(str(p) for p in predictions)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]


def _overlaps(features: dict[str, np.ndarray], class_rows: np.ndarray, failing_rows: np.ndarray) -> dict:
    """Per feature, the values commoner among the group's failures than among the class's rows."""
    found = {}
    for name, column in features.items():
        values, inverse = np.unique(np.asarray(column[class_rows]).astype(str), return_inverse=True)
        in_class = np.bincount(inverse, minlength=len(values)) / len(class_rows)
        failing = np.isin(class_rows, failing_rows)
        in_fail = np.bincount(inverse[failing], minlength=len(values)) / max(failing.sum(), 1)
        gain = in_fail - in_class
        order = [i for i in np.argsort(-gain, kind="stable") if gain[i] >= MIN_ENRICHMENT - 1e-12]
        if order:
            found[name] = {str(values[i]): float(in_fail[i]) for i in order}
    return found


def failure_groups(embeddings: np.ndarray, errors: np.ndarray, classes: np.ndarray, predictions: np.ndarray,
                   features: dict[str, np.ndarray] | None = None, *, max_k: int = 8, min_errors: int = 10,
                   error_weight: float = 1.0, seed: int = 0, bic_rows: int = 3000) -> list[FailureGroup]:
    """Failure groups of every class over the rows given (pass valid rows only), most severe first.

    Classes with fewer than ``min_errors`` failures yield nothing. Deterministic given ``seed``.
    ``features``: optional per-row categorical columns, summarised in each group's ``overlaps``.
    """
    if max_k < 1 or min_errors < 1:
        raise ValueError("max_k and min_errors must be at least 1")
    with thread_pool():
        return _failure_groups(embeddings, errors, classes, predictions, features, max_k=max_k,
                               min_errors=min_errors, error_weight=error_weight, seed=seed, bic_rows=bic_rows)


def _failure_groups(embeddings, errors, classes, predictions, features, *, max_k, min_errors, error_weight,
                    seed, bic_rows) -> list[FailureGroup]:
    x, err, cls, extra = as_inputs(embeddings, errors, classes, predictions=predictions,
                                   **{f"features[{k!r}]": v for k, v in (features or {}).items()})
    preds = extra["predictions"]
    feats = {k: extra[f"features[{k!r}]"] for k in (features or {})}
    groups: list[FailureGroup] = []
    for name in np.unique(cls):
        idx = np.flatnonzero(cls == name)
        e = err[idx]
        if e.sum() < min_errors:
            continue
        z = normalize(x[idx])
        k, _ = choose_k(z, min(max_k, max(1, len(idx) // min_errors)), bic_rows=bic_rows, seed=seed)
        labels = np.zeros(len(idx), dtype=np.int64)
        if k > 1:
            spread = np.sqrt(((z - z.mean(axis=0)) ** 2).sum(axis=1).mean())
            aware = np.hstack([z, (error_weight * spread * e)[:, None]])
            km = KMeans(k, n_init=3, random_state=seed).fit(aware)
            centres = np.stack([z[km.labels_ == j].mean(axis=0) for j in range(k) if (km.labels_ == j).any()])
            labels = (z @ centres.T - 0.5 * (centres ** 2).sum(axis=1)).argmax(axis=1)  # nearest centre
        class_rate = float(e.mean())
        for j in np.unique(labels):
            member = labels == j
            fails = int(e[member].sum())
            rate = fails / int(member.sum())
            if fails < min_errors or rate <= class_rate:
                continue
            rows = idx[member].astype(np.int64)
            failing = rows[err[rows]]
            groups.append(FailureGroup(
                class_name=str(name), rows=rows, n=int(member.sum()), errors=fails, error_rate=rate,
                class_error_rate=class_rate, top_wrong=_top_wrong(preds[failing]) if preds is not None else [],
                overlaps=_overlaps(feats, idx, failing) if feats else {}))
    return sorted(groups, key=lambda g: (-g.severity, g.class_name, int(g.rows[0])))
