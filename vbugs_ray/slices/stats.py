"""Per-slice tests from counts: a slice S against its complement C on the error rate.

Null: errors are exchangeable between S and C (the error rate is the same). Alternative
(one-sided): S fails more often than C. The test is Fisher's exact test in its hypergeometric
form: given the total number of errors, how unlikely are at least ``k_s`` of them inside S.
Vectorised over slices with scipy's hypergeometric survival function.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def fisher_greater_log(k_s: np.ndarray, n_s: np.ndarray, k_total: int, n_total: int) -> np.ndarray:
    """log of the one-sided Fisher exact p-value, log P(X >= k_s), X ~ Hypergeom(n_total, k_total, n_s).

    Kept in logs so that slices far beyond float precision (p < 1e-308) still rank by strength.
    """
    k_s = np.asarray(k_s, np.int64)
    n_s = np.asarray(n_s, np.int64)
    return np.minimum(stats.hypergeom.logsf(k_s - 1, n_total, k_total, n_s), 0.0)


def effect_size(p_s: np.ndarray, p_c: np.ndarray) -> np.ndarray:
    """SliceFinder / TFMA effect size on a 0/1 metric: sqrt(2) (p_s - p_c) / sqrt(var_s + var_c)."""
    var = p_s * (1 - p_s) + p_c * (1 - p_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.sqrt(2.0) * (p_s - p_c) / np.sqrt(var)
    return np.where(var > 0, d, np.where(p_s > p_c, np.inf, 0.0))


def clopper_pearson(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided confidence interval for a binomial proportion."""
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    a = (1 - level) / 2
    low = np.where(k > 0, stats.beta.ppf(a, k, n - k + 1), 0.0)
    high = np.where(k < n, stats.beta.ppf(1 - a, k + 1, n - k), 1.0)
    return low, high


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (scipy's false_discovery_control); reject where q <= alpha."""
    p = np.asarray(p, np.float64)
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")
