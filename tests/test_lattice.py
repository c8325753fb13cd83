"""The lattice search of issue 4: statistics core, calibration, power, pruning equivalence.

Null of every slice test: the slice's error rate equals its complement's; alternative
(one-sided): higher. Calibration: error labels independent of the metadata -> the share of runs
with any flagged slice stays near or below alpha (BH and alpha-investing). Power: planted slices
of order 1-3, support >= 0.5%, error rate >= 3x base, are all found at 100k rows.
"""

import numpy as np
import pytest
from scipy import stats as sps

from vbugs_ray.slices import SearchSettings
from vbugs_ray.slices.search import search_slices
from vbugs_ray.slices import stats
from vbugs_ray.slices.encode import OTHER, encode_column
from vbugs_ray.slices.lattice import lattice_size
from vbugs_ray.slices.search import bh_qvalues


def _features(rng, n, n_features=8, card=5):
    return {f"f{j}": rng.integers(0, card, n).astype(str) for j in range(n_features)}


def _planted(rng, n, slices, base=0.05, n_features=8, card=5, ratio=3.5):
    """A table with planted slices (dicts feature -> value) of raised error rate (``ratio`` x base)."""
    cols = _features(rng, n, n_features, card)
    p = np.full(n, base)
    for planted in slices:
        inside = np.ones(n, bool)
        for f, v in planted.items():
            inside &= cols[f] == v
        p[inside] = ratio * base
    return cols, rng.random(n) < p


def test_welch_from_sums_matches_scipy_on_raw_data():
    rng = np.random.default_rng(0)
    loss = rng.exponential(1.0, 500)
    inside = rng.random(500) < 0.2
    loss[inside] += 0.3
    ours = stats.welch_greater(np.array([loss[inside].sum()]), np.array([(loss[inside] ** 2).sum()]),
                               np.array([inside.sum()]), loss.sum(), (loss ** 2).sum(), 500)[0]
    ref = sps.ttest_ind(loss[inside], loss[~inside], equal_var=False, alternative="greater").pvalue
    assert ours == pytest.approx(ref, rel=1e-6)


def test_ztest_agrees_with_fisher_for_large_counts():
    k, n, K, N = np.array([130]), np.array([1000]), 1100, 20000
    z = np.exp(stats.ztest_greater_log(k, n, K, N))[0]
    f = np.exp(stats.fisher_greater_log(k, n, K, N))[0]
    assert z == pytest.approx(f, rel=0.5) and z < 1e-10


def test_bh_with_family_matches_scipy_when_nothing_is_pruned():
    p = np.random.default_rng(1).random(50) ** 3
    np.testing.assert_allclose(bh_qvalues(p, 50), sps.false_discovery_control(p, method="bh"))
    assert np.all(bh_qvalues(p, 500) >= bh_qvalues(p, 50))


def test_alpha_investing_spends_and_earns():
    """Exact masks of Foster & Stine's procedure on sequences short enough to follow by hand:
    wealth W starts at alpha; test j runs at level min(W / (1 + j - last), W / (1 + W)) (last: the
    latest rejection, -1 before any); a rejection earns alpha, a non-rejection costs level / (1 - level)."""
    ai = stats.alpha_investing
    assert ai(np.array([1e-6, 1e-6, 1e-6]), 0.05).tolist() == [True, True, True]
    assert not ai(np.full(200, 0.5), 0.05).any()
    # alpha = 0.05. j=0: level min(.05/2, .05/1.05) = .025, p=.001 rejected, W = .1, last = 0.
    # j=1: level min(.1/2, .1/1.1) = .05: p=.04 is rejected only because the rejection earned alpha
    # (with W still .05 the level would be .025)
    assert ai(np.array([0.001, 0.04]), 0.05).tolist() == [True, True]
    assert ai(np.array([0.001, 0.06]), 0.05).tolist() == [True, False]
    # a later small p-value after two nulls: j=0 level .025, W = .05 - .025/.975 = .024359;
    # j=1 level .024359/3 = .0081197, W = .024359 - .0081197/.99188 = .016173; j=2 level .016173/4 = .0040432
    assert ai(np.array([0.9, 0.9, 0.004]), 0.05).tolist() == [False, False, True]
    assert ai(np.array([0.9, 0.9, 0.0045]), 0.05).tolist() == [False, False, False]
    # spending restarts after a discovery: j=0 level .025, W = .024359; j=1 level .0081197, p=.001
    # rejected, W = .074359, last = 1; j=2 level min(.074359/2, .074359/1.074359) = .03718 (.01859 if
    # the denominator kept counting from the start)
    assert ai(np.array([0.9, 0.001, 0.03]), 0.05).tolist() == [False, True, True]
    assert ai(np.array([0.9, 0.001, 0.04]), 0.05).tolist() == [False, True, False]
    # wealth runs out: alpha = .5. j=0: level min(.5/2, .5/1.5) = .25, p=.1 rejected, W = 1, last = 0;
    # j=1: level min(1/2, 1/2) = .5, p=.9 not rejected, cost .5/.5 = 1 -> W = 0 exactly: nothing after
    # is rejected, not even p = 0 (a level of 0 would take it)
    assert ai(np.array([0.1, 0.9, 0.0, 0.0]), 0.5).tolist() == [True, False, False, False]
    # after n nulls from the start W_n <= alpha / (n + 1) (each costs at least W / (j + 2)), so after
    # 500 nulls the level is <= .05 / 501 / 502 ~ 2e-7: p = 1e-4 is not rejected
    assert not ai(np.concatenate([np.full(500, 0.9), [1e-4]]), 0.05).any()
    # ... while the same p-value first in line is (level .025)
    assert ai(np.concatenate([[1e-4], np.full(500, 0.9)]), 0.05).tolist() == [True] + [False] * 500


def test_encoding_bins_numbers_and_caps_categories():
    codes, labels = encode_column(np.linspace(0, 1, 1000), n_bins=4)
    assert len(labels) == 4 and np.bincount(codes).tolist() == [250, 250, 250, 250]
    values = np.array([f"v{i}" for i in range(30)] * 3 + ["v0"] * 50)
    codes, labels = encode_column(values, max_values=5)
    assert len(labels) == 5 and labels[0] == "v0" and labels[-1] == OTHER
    codes, labels = encode_column(np.array(["a", None, "b"], dtype=object))
    assert "<missing>" in labels


@pytest.mark.parametrize("prune", ["auto", "elevated"])
@pytest.mark.parametrize("fdr", ["bh", "alpha_investing"])
def test_calibration_independent_errors(fdr, prune):
    """Error labels independent of the metadata: the share of runs with any flagged slice is at
    most alpha. Null of each slice test: equal error rates in slice and complement; alternative
    (one-sided): higher. Under this global null every flag is false, so:
    - BH: FDR = P(any flag) <= alpha (its guarantee; pruned slices count as p = 1, conservative);
    - alpha-investing guarantees mFDR = E[V] / (E[R] + 1) <= alpha, which bounds E[R], not
      P(any flag) directly; but before the first rejection the levels are fixed by the non-rejections
      and each costs level / (1 - level) >= level out of an initial wealth alpha, so their sum is
      <= alpha and, by the union bound over valid p-values, P(any rejection) <= alpha as well
      (strictly for a test order fixed in advance, as 'auto' = exact pruning nearly is here; with
      'elevated' which slices enter the sequence depends on their parents' counts, so that
      variant is a check of the procedure as used rather than of a theorem).
    The check is one-sided (is the procedure above alpha?): the count of runs with a flag against
    the 99% quantile of Binomial(runs, alpha), a 1% false alarm per parametrisation (four)."""
    runs, alpha, any_flagged = 200, 0.2, 0
    limit = sps.binom.ppf(0.99, runs, alpha)  # P(X > limit | rate alpha) < 1%
    # design: a procedure flagging at twice alpha passes with probability < 5%
    assert sps.binom.cdf(limit, runs, 2 * alpha) < 0.05
    for seed in range(runs):
        rng = np.random.default_rng([seed, 99])
        cols = _features(rng, 2500, n_features=4, card=4)  # 368 slices of order <= 3
        errors = rng.random(2500) < 0.08
        result = search_slices(cols, errors, SearchSettings(alpha=alpha, max_order=3, min_effect=0.0, fdr=fdr,
                                                            prune=prune))
        any_flagged += bool(result.flagged)
    assert any_flagged <= limit, f"{fdr}, {prune}: {any_flagged}/{runs} null runs flagged something (limit {limit:.0f})"


@pytest.mark.parametrize("ratio, min_effect", [(3.5, 0.2), (3.0, 0.0)])
def test_power_orders_one_to_three_at_100k_rows(ratio, min_effect):
    """Planted slices of order 1-3 (supports 20%, 4%, 0.8%) at 3.5x and at the issue's floor of 3x
    the base rate are all found. At 3x, with other failures raising the complement's error rate,
    the order-3 slice's effect size is about 0.19, under SliceFinder's default min_effect of 0.2
    (an extra filter users may keep), so the floor is checked on the test alone."""
    rng = np.random.default_rng(2024)
    planted = [{"f0": "1"}, {"f2": "3", "f5": "0"}, {"f1": "2", "f4": "4", "f7": "1"}]
    cols, errors = _planted(rng, 100_000, planted, base=0.04, ratio=ratio)
    # the order-3 slice has 100k / 125 = 800 rows (0.8%)
    result = search_slices(cols, errors, SearchSettings(alpha=0.05, max_order=3, min_effect=min_effect))
    top = [s["predicates"] for s in result.flagged[:10]]
    for p in planted:
        assert p in top, f"planted slice {p} not in the top 10: {top}"
    assert result.evaluated <= result.lattice_size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_is_exact_for_what_is_flagged(seed):
    rng = np.random.default_rng([seed, 7])
    planted = [{"f1": "0", "f3": "2"}, {"f0": "4", "f2": "1", "f6": "3"}]
    cols, errors = _planted(rng, 30_000, planted, base=0.05)
    pruned = search_slices(cols, errors, SearchSettings(max_order=3, prune="exact", min_support=30))
    full = search_slices(cols, errors, SearchSettings(max_order=3, prune="none", min_support=30))
    assert [s["predicates"] for s in pruned.flagged] == [s["predicates"] for s in full.flagged]
    assert pruned.lattice_size == full.lattice_size == lattice_size([5] * 8, 3)
    assert pruned.evaluated <= full.evaluated


def _distinct(result) -> list[dict]:
    """The failures a report leads with: flagged, not a worse part of a flagged parent, not explained."""
    return [s["predicates"] for s in result.flagged if s["parent"] is None and s["explained_by"] is None]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_elevated_pruning_names_the_same_failures_as_exhaustive_search(seed):
    """The documented difference: prune='elevated' tests a few percent of the lattice, so the lower
    tiers (worse parts of a failure, explained slices) may differ, but the distinct failures at
    the top of the report are the exhaustive search's."""
    rng = np.random.default_rng([seed, 11])
    planted = [{"f1": "0", "f3": "2"}, {"f0": "4", "f2": "1", "f6": "3"}, {"f9": "2"}]
    cols, errors = _planted(rng, 100_000, planted, base=0.05, n_features=12)
    fast = search_slices(cols, errors, SearchSettings(max_order=3, prune="elevated"))
    full = search_slices(cols, errors, SearchSettings(max_order=3, prune="none"))
    assert _distinct(fast) == _distinct(full)
    assert all(p in _distinct(fast) for p in planted)
    assert fast.evaluated <= 0.05 * fast.lattice_size  # the budget: <= 5% of the lattice
    assert (fast.prune, full.prune) == ("elevated", "none")


def test_auto_pruning_follows_failures_on_large_tables_at_the_power_floor():
    """From a million rows 'auto' prunes by elevation; a slice near the issue's floor (support
    0.8%, 3x the base rate, order 3) is found there while a few percent of the lattice is tested."""
    rng = np.random.default_rng(31)
    n, base = 1_000_000, 0.05
    cols = _features(rng, n, 12, 5)
    inside = (cols["f2"] == "1") & (cols["f5"] == "3") & (cols["f8"] == "0")  # 0.8% of the rows
    errors = rng.random(n) < np.where(inside, 3 * base, base)
    result = search_slices(cols, errors, SearchSettings(max_order=3))
    assert result.prune == "elevated"
    assert {"f2": "1", "f5": "3", "f8": "0"} in _distinct(result)
    assert result.evaluated <= 0.05 * result.lattice_size


def test_flagged_fields_and_loss_test():
    rng = np.random.default_rng(5)
    cols, errors = _planted(rng, 20_000, [{"f0": "1", "f1": "2"}])
    loss = rng.exponential(0.3, 20_000) + errors * 2.0
    result = search_slices(cols, errors, SearchSettings(max_order=2), loss=loss)
    top = result.flagged[0]
    assert top["predicates"] == {"f0": "1", "f1": "2"}
    for key in ("effect", "ci_low", "ci_high", "loss_mean", "loss_p_value", "parent", "explained_by"):
        assert key in top
    assert top["loss_p_value"] < 1e-6 and top["loss_mean"] > loss.mean()


def test_pruning_can_change_what_alpha_investing_rejects():
    """Why exact pruning's guarantee covers BH only (README): alpha-investing spends its wealth
    over tests in evaluation order, so a test not made (a pruned slice) leaves more for the tests
    after it. Here the same final p-value is rejected once five null tests are taken out."""
    full = np.array([1e-6, 0.5, 0.5, 0.5, 0.5, 0.5, 0.004])
    assert stats.alpha_investing(full, 0.05).tolist() == [True] + [False] * 6
    assert stats.alpha_investing(full[[0, 6]], 0.05).tolist() == [True, True]
