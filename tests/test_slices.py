"""Statistics of the first slice search.

Null hypothesis of every test: the slice's error rate equals its complement's (errors are
exchangeable given the margins). Alternative: the slice's error rate is higher (one-sided).
Calibration: with error labels independent of the metadata, BH at alpha keeps the share of runs
with any flagged slice near or below alpha (under the global null, FDR = P(any discovery)).
Power: a planted slice with a raised error rate is flagged, and ranked first.
"""

import numpy as np
import pytest
from scipy import stats as sps

from vbugs_ray.slices import SearchSettings
from vbugs_ray.slices.search import search_slices
from vbugs_ray.slices import stats


def _table(rng, n=4000, features=4, card=4):
    return {f"f{j}": rng.integers(0, card, n).astype(str) for j in range(features)}


def test_fisher_matches_scipy():
    k_s, n_s, k_c, n_c = 9, 40, 30, 500
    ours = np.exp(stats.fisher_greater_log(np.array([k_s]), np.array([n_s]), k_s + k_c, n_s + n_c))[0]
    ref = sps.fisher_exact([[k_s, n_s - k_s], [k_c, n_c - k_c]], alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=1e-9)


def test_effect_and_interval():
    assert stats.effect_size(np.array([0.5]), np.array([0.5]))[0] == 0
    assert stats.effect_size(np.array([0.6]), np.array([0.1]))[0] > 1
    low, high = stats.clopper_pearson(np.array([5]), np.array([50]))
    ref = sps.binomtest(5, 50).proportion_ci(method="exact")
    assert (low[0], high[0]) == pytest.approx((ref.low, ref.high))


@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("base", [0.1, 0.5])
def test_calibration_no_planted_slice(alpha, base):
    """Independent errors (no slice differs): BH at alpha flags something in at most a share alpha
    of runs. Null of each run's slice tests: equal error rates in slice and complement; one-sided
    alternative (higher). Under this global null every discovery is false, so BH's FDR guarantee is
    P(any flagged slice) <= alpha. The check is one-sided (is the procedure above alpha?): the count
    of runs with a flag is compared with the 99% quantile of Binomial(runs, alpha), a 1% false alarm,
    one check per parametrisation (four, so at most ~4% for the file). Error rates 10% (typical: the
    counts are skewed, where a normal approximation's thin tail once flagged 50/500 null runs at
    alpha 0.05) and 50% (symmetric)."""
    runs = 500
    limit = sps.binom.ppf(0.99, runs, alpha)  # P(X > limit | rate alpha) < 1%
    # design: a procedure flagging at twice alpha passes with probability < 5%
    assert sps.binom.cdf(limit, runs, 2 * alpha) < 0.05
    settings = SearchSettings(alpha=alpha, min_support=20, max_order=2, min_effect=0.0)
    any_flagged = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        cols = _table(rng, n=2500)  # 4 features x 4 values: 112 slices of order <= 2
        errors = rng.random(2500) < base
        any_flagged += bool(search_slices(cols, errors, settings).flagged)
    assert any_flagged <= limit, f"{any_flagged}/{runs} null runs flagged something at alpha={alpha} (limit {limit:.0f})"


def test_power_planted_order_two_slice():
    rng = np.random.default_rng(7)
    cols = _table(rng, n=6000)
    inside = (cols["f1"] == "2") & (cols["f3"] == "0")
    errors = np.where(inside, rng.random(6000) < 0.35, rng.random(6000) < 0.05)
    result = search_slices(cols, errors, SearchSettings(alpha=0.05, min_support=20, max_order=2))
    assert result.flagged, "planted slice not found"
    assert result.flagged[0]["predicates"] == {"f1": "2", "f3": "0"}
    top = result.flagged[0]
    assert top["n"] == int(inside.sum()) and top["errors"] == int(errors[inside].sum())
    assert top["q_value"] <= 0.05 and top["error_rate"] > top["complement_error_rate"]
    assert top["ci_low"] <= top["error_rate"] <= top["ci_high"]
    assert result.lattice_size == 4 * 4 + 6 * 16 and result.evaluated <= result.lattice_size


def test_min_support_and_effect_filter():
    """The support and effect filters cut exactly at their thresholds. A planted order-1 slice
    (f0 = 1, error rate 12% vs 5%: significant, q ~ 1e-6, but a small effect of about 0.23) is
    flagged while ``min_support`` <= its rows and ``min_effect`` <= its effect size (SliceFinder's,
    computed here from the raw rows), and not once either threshold is just above it. Null of the
    slice test: equal error rates; alternative: higher inside (one-sided); BH at alpha = 0.05."""
    rng = np.random.default_rng(3)
    cols = _table(rng, n=3000)
    errors = rng.random(3000) < 0.05
    big = search_slices(cols, errors, SearchSettings(min_support=10_000))
    assert big.evaluated == 0 and big.flagged == []
    inside = cols["f0"] == "1"
    errors = np.where(inside, rng.random(3000) < 0.12, errors)  # significant but small effect
    planted = {"f0": "1"}
    n_inside = int(inside.sum())
    effect = stats.effect_size(np.array([errors[inside].mean()]), np.array([errors[~inside].mean()]))[0]
    assert 0.1 < effect < 1.0  # a small effect: the thresholds below are far from 0 and from 5

    def flagged(**settings) -> dict | None:
        result = search_slices(cols, errors, SearchSettings(**settings))
        return next((s for s in result.flagged if s["predicates"] == planted), None)

    found = flagged(min_effect=effect - 1e-6)
    assert found is not None, f"planted slice (effect {effect:.4f}) not flagged at min_effect just below it"
    assert found["effect"] == pytest.approx(effect, rel=1e-9) and found["n"] == n_inside
    assert found["q_value"] <= 0.05
    assert flagged(min_effect=effect + 1e-6) is None, f"flagged at min_effect above its effect {effect:.4f}"
    assert flagged(min_effect=5.0) is None
    # min_support: a slice is tested from exactly min_support rows on
    assert flagged(min_effect=0.0, min_support=n_inside) is not None
    assert flagged(min_effect=0.0, min_support=n_inside + 1) is None


def test_children_of_a_flagged_slice_do_not_crowd_out_unrelated_failures():
    """A strong order-1 failure must not push a weaker unrelated one out with its sub-slices."""
    rng = np.random.default_rng(11)
    n = 20000
    cols = _table(rng, n=n, features=4, card=5)
    strong = cols["f0"] == "1"
    weak = (cols["f2"] == "3") & (cols["f3"] == "4")
    p = np.where(strong, 0.5, np.where(weak, 0.25, 0.05))
    errors = rng.random(n) < p
    result = search_slices(cols, errors, SearchSettings(alpha=0.05, max_order=2))
    top = [s["predicates"] for s in result.flagged[:3]]
    assert {"f0": "1"} in top and {"f2": "3", "f3": "4"} in top
    # children of f0=1 that are no worse than the rest of f0=1 are dropped, not listed
    assert result.redundant_children > 0
    for s in result.flagged:
        if s["predicates"].get("f0") == "1" and s["order"] == 2:
            assert s["parent"] == {"f0": "1"}
