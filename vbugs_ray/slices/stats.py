"""Per-slice tests from counts, vectorised over slices.

Error rate, slice S against its complement C. Null: errors are exchangeable between S and C
(the error rate is the same). Alternative (one-sided): S fails more often than C. Test:
Fisher's exact test (hypergeometric: given the total number of errors, how unlikely are at
least ``k_s`` of them inside S) where an expected cell count is small, its binomial
approximation elsewhere (``error_rate_log_p``). Mean loss: one-sided Welch t-test from sums (``welch_greater``).
Also: the effect size, Clopper-Pearson intervals, and alpha-investing.
"""

from __future__ import annotations

import numpy as np
from scipy import special

# scipy.stats costs about half a second to import; large tables never need it (no small counts),
# so the functions that do (Fisher, Welch) import it when first called.


def fisher_greater_log(k_s: np.ndarray, n_s: np.ndarray, k_total: int, n_total: int) -> np.ndarray:
    """log of the one-sided Fisher exact p-value, log P(X >= k_s), X ~ Hypergeom(n_total, k_total, n_s).

    Kept in logs so that slices far beyond float precision (p < 1e-308) still rank by strength.
    """
    from scipy import stats

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
    with np.errstate(invalid="ignore", divide="ignore"):  # beta quantiles: scipy.stats.beta.ppf's kernel
        low = np.where(k > 0, special.betaincinv(k, n - k + 1, a), 0.0)
        high = np.where(k < n, special.betaincinv(k + 1, n - k, 1 - a), 1.0)
    return low, high


def ztest_greater_log(k_s: np.ndarray, n_s: np.ndarray, k_total: int, n_total: int) -> np.ndarray:
    """log p of the one-sided two-proportion z-test (pooled variance), slice vs complement."""
    k_s = np.asarray(k_s, np.float64)
    n_s = np.asarray(n_s, np.float64)
    n_c = n_total - n_s
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = k_total / n_total
        diff = k_s / n_s - (k_total - k_s) / n_c
        se = np.sqrt(p0 * (1 - p0) * (1 / n_s + 1 / n_c))
        z = np.where(se > 0, diff / se, 0.0)
    return special.log_ndtr(-z)  # log of the normal upper tail, = scipy.stats.norm.logsf(z)


def binomial_greater_log(k_s: np.ndarray, n_s: np.ndarray, k_total, n_total) -> np.ndarray:
    """log p of Fisher's one-sided test approximated by a binomial tail, taken on the smaller side
    of the split: P(Bin(n_s, p0) >= k_s) when the slice is at most half the rows, else
    P(Bin(n_c, p0) <= k_c) for the complement, with p0 the pooled error rate. A binomial is wider
    than the hypergeometric it stands for (by at most 2x in variance on the smaller side), so its
    tail errs on the conservative side, where the normal approximation's thin tail made a
    skewed count look too significant at the small levels Benjamini-Hochberg uses. Tails beyond
    float range (p < 1e-300) keep their order through the normal approximation's log."""
    k_s = np.asarray(k_s, np.float64)
    n_s = np.asarray(n_s, np.float64)
    k_total = np.asarray(k_total, np.float64)
    n_total = np.asarray(n_total, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(n_total > 0, k_total / np.maximum(n_total, 1), 0.0)
        n_c = (n_total - n_s).astype(np.int64)
        upper = special.bdtrc(np.maximum(k_s - 1, 0), n_s.astype(np.int64), p0)  # P(X >= k_s), X ~ Bin(n_s, p0)
        lower = special.bdtr(k_total - k_s, n_c, p0)  # P(Y <= k_c), Y ~ Bin(n_c, p0)
        p = np.where(n_s <= n_total - n_s, upper, lower)
        p = np.where(k_s <= 0, 1.0, np.clip(p, 0.0, 1.0))
        log_p = np.log(p)
    tiny = ~(p > 1e-300)
    if tiny.any():
        z = ztest_greater_log(k_s, n_s, k_total, n_total)
        log_p = np.where(tiny, np.minimum(z, np.log(1e-300)), log_p)
    return log_p


def error_rate_log_p(k_s: np.ndarray, n_s: np.ndarray, k_total, n_total, min_expected: float = 10.0,
                     large: str = "binomial") -> np.ndarray:
    """log p of the one-sided error-rate test: Fisher exact where any expected cell count of the
    2x2 table is under ``min_expected``; elsewhere (where the exact test is too slow on large
    tables) its binomial approximation (``binomial_greater_log``), or with ``large="normal"`` the
    pooled two-proportion z-test (thin-tailed: for screening, never for a reported p-value).
    The totals may be arrays (one population per slice: a slice within its parent)."""
    k_s = np.asarray(k_s, np.int64)
    n_s = np.asarray(n_s, np.int64)
    k_total = np.broadcast_to(np.asarray(k_total, np.int64), k_s.shape)
    n_total = np.broadcast_to(np.asarray(n_total, np.int64), k_s.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(n_total > 0, k_total / np.maximum(n_total, 1), 0.0)
    smallest = np.minimum(n_s, n_total - n_s) * np.minimum(p0, 1 - p0)
    exact = smallest < min_expected
    approx = binomial_greater_log if large == "binomial" else ztest_greater_log
    out = np.empty(k_s.shape, np.float64)
    if exact.any():
        out[exact] = fisher_greater_log(k_s[exact], n_s[exact], k_total[exact], n_total[exact])
    if (~exact).any():
        out[~exact] = approx(k_s[~exact], n_s[~exact], k_total[~exact], n_total[~exact])
    return out


def welch_greater(sum_s: np.ndarray, sumsq_s: np.ndarray, n_s: np.ndarray,
                  sum_total: float, sumsq_total: float, n_total: int) -> np.ndarray:
    """One-sided Welch t-test p-values (slice mean loss > complement mean loss) from sums.

    Null: equal mean loss; alternative: the slice's mean loss is higher. Needs n >= 2 on each side.
    """
    from scipy import stats

    n_s = np.asarray(n_s, np.float64)
    n_c = n_total - n_s
    sum_c, sumsq_c = sum_total - np.asarray(sum_s), sumsq_total - np.asarray(sumsq_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_s, mean_c = np.asarray(sum_s) / n_s, sum_c / n_c
        var_s = np.maximum(np.asarray(sumsq_s) - n_s * mean_s**2, 0) / (n_s - 1)
        var_c = np.maximum(sumsq_c - n_c * mean_c**2, 0) / (n_c - 1)
        result = stats.ttest_ind_from_stats(mean_s, np.sqrt(var_s), n_s, mean_c, np.sqrt(var_c), n_c,
                                            equal_var=False, alternative="greater")
    return np.where((n_s >= 2) & (n_c >= 2), np.nan_to_num(result.pvalue, nan=1.0), 1.0)


def alpha_investing(p_values_in_order: np.ndarray, alpha: float) -> np.ndarray:
    """Foster & Stine's alpha-investing over tests in the order they were made (best-first).

    Wealth starts at alpha; test j is run at level min(W / (1 + j - last), W / (1 + W)), where
    ``last`` is the index of the latest rejection (spend faster right after a discovery); a
    rejection earns alpha, a non-rejection costs level / (1 - level). Controls mFDR at alpha.
    Returns the rejection mask.
    """
    wealth, last = alpha, -1
    reject = np.zeros(len(p_values_in_order), bool)
    for j, p in enumerate(np.asarray(p_values_in_order, np.float64)):
        if wealth <= 0:
            break
        level = min(wealth / (1 + j - last), wealth / (1 + wealth))
        if p <= level:
            reject[j] = True
            wealth += alpha
            last = j
        else:
            wealth -= level / (1 - level)
    return reject
