"""vbugs_ray.discover on plain synthetic arrays (no Ray, no torch, no model): each test plants a
known structure, or none, and states what the method must find."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.preprocessing import normalize

from vbugs_ray.discover import DiagnosisEnsemble, choose_k, failure_directions, failure_groups, rank_phrases
from vbugs_ray.discover.diagnosis import fit_per_class

D = 64


def _blobs(rng, n_blobs: int, per_blob: int, dim: int = D, offset: float = 0.6, noise: float = 0.5):
    """Unit-norm embeddings: blobs around a class centre; returns (embeddings, blob label)."""
    centre = normalize(rng.normal(size=(1, dim)))
    means = normalize(centre + offset * normalize(rng.normal(size=(n_blobs, dim))))
    label = np.repeat(np.arange(n_blobs), per_blob)
    return normalize(means[label] + noise / np.sqrt(dim) * rng.normal(size=(len(label), dim))), label


def _planted(seed: int = 0):
    """3 classes x 3 blobs x 300 rows; blob 1 of class 'b' fails at 70%, the rest at 5%; class 'd'
    (2 blobs) never fails."""
    rng = np.random.default_rng(seed)
    x, cls, blob, err = [], [], [], []
    for name, n_blobs in (("a", 3), ("b", 3), ("c", 3), ("d", 2)):
        e, lab = _blobs(rng, n_blobs, 300)
        rate = np.where((name == "b") & (lab == 1), 0.7, 0.0 if name == "d" else 0.05)
        x.append(e), cls.append(np.full(len(e), name)), blob.append(lab), err.append(rng.random(len(e)) < rate)
    x, cls, blob, err = map(np.concatenate, (x, cls, blob, err))
    pred = np.where(err, np.where(cls == "a", "b", "a"), cls)
    return x, err, cls, pred, blob


def test_failure_groups_find_the_planted_blob():
    x, err, cls, pred, blob = _planted()
    groups = failure_groups(x, err, cls, pred)
    planted = np.flatnonzero((cls == "b") & (blob == 1))
    planted_fails = planted[err[planted]]
    top_b = next(g for g in groups if g.class_name == "b")
    # the top group of 'b' covers >= 80% of the blob's failures, and fails at > 50%
    assert np.isin(planted_fails, top_b.rows).mean() >= 0.8
    assert top_b.error_rate > 0.5
    assert groups[0] is top_b  # it is also the most severe group of all classes
    assert top_b.top_wrong == [("a", top_b.errors)]
    # 'd' never fails: no group; every group beats its class and holds >= min_errors failures
    assert all(g.class_name != "d" for g in groups)
    assert all(g.error_rate > g.class_error_rate and g.errors >= 10 for g in groups)
    assert json.loads(json.dumps(top_b.to_dict()))["errors"] == top_b.errors
    assert "rows" not in top_b.to_dict()


def test_failure_groups_are_deterministic_given_seed():
    x, err, cls, pred, _ = _planted(seed=3)
    one, two = failure_groups(x, err, cls, pred, seed=5), failure_groups(x, err, cls, pred, seed=5)
    assert [g.to_dict() for g in one] == [g.to_dict() for g in two]
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(one, two))


def test_top_wrong_and_overlaps_on_a_constructed_class():
    """One class, two blobs of 100; blob 1 holds all 20 failures, all with background 'snow',
    which 40 of the class's 200 rows have (share 0.2 in the class, 1.0 among the failures)."""
    rng = np.random.default_rng(1)
    x, blob = _blobs(rng, 2, 100)
    err = np.zeros(200, bool)
    fails = np.flatnonzero(blob == 1)[:20]
    err[fails] = True
    pred = np.full(200, "cat", dtype=object)
    pred[fails] = ["wolf"] * 12 + ["fox"] * 5 + ["dog"] * 2 + ["lynx"]
    background = np.full(200, "grass", dtype=object)
    background[fails] = "snow"
    background[np.flatnonzero(blob == 0)[:20]] = "snow"
    light = np.where(np.arange(200) % 2 == 0, "day", "night")  # independent of the failures
    light[fails] = ["day", "night"] * 10
    groups = failure_groups(x, err, np.full(200, "cat"), pred, {"background": background, "light": light})
    assert len(groups) == 1
    g = groups[0]
    assert set(fails) <= set(g.rows) and g.n == 100 and g.errors == 20
    assert g.top_wrong == [("wolf", 12), ("fox", 5), ("dog", 2)]
    assert g.overlaps == {"background": {"snow": 1.0}}  # 'light' is not enriched, so absent


def test_k_criterion_matches_the_structure():
    """BIC picks the number of blobs, and 1 for one cloud, isotropic or elongated (a spherical
    mixture in the raw space gives 5-8 for the elongated cloud)."""
    rng = np.random.default_rng(2)
    for n_blobs in (2, 4, 6):
        z, _ = _blobs(rng, n_blobs, 250)
        assert choose_k(z, 8)[0] == n_blobs
    assert choose_k(normalize(rng.normal(size=(1500, D))), 8)[0] == 1
    centre = normalize(rng.normal(size=(1, D)))
    elongated = normalize(centre + 0.5 / np.sqrt(D) * rng.normal(size=(1500, D)) * np.linspace(0.1, 1.5, D))
    assert choose_k(elongated, 8)[0] == 1


def test_no_extreme_groups_when_errors_ignore_the_images():
    """4 blobs x 500 rows per class, errors at 10% independent of the embedding: groups may be
    returned (a blob's rate exceeds the class's by chance) but none has lift >= 1.6 (a blob's
    failures are Binomial(500, 0.1), sd 6.7 around 50: lift 1.6 is 4.5 sd)."""
    rng = np.random.default_rng(4)
    x = np.concatenate([_blobs(rng, 4, 500)[0] for _ in range(3)])
    cls = np.repeat(["a", "b", "c"], 2000)
    err = rng.random(len(x)) < 0.1
    groups = failure_groups(x, err, cls, np.where(err, "z", cls))
    assert all(g.error_rate / g.class_error_rate < 1.6 for g in groups)
    # and where there is no structure at all, k = 1, so no group
    flat = normalize(rng.normal(size=(3000, D)))
    assert failure_groups(flat, rng.random(3000) < 0.1, np.repeat(["a", "b"], 1500), np.full(3000, "z")) == []


def _logistic_errors(rng, n: int, truth: np.ndarray, classes=("a", "b", "c")):
    x = normalize(rng.normal(size=(n * len(classes), D)))
    logit = -2.0 + 24.0 * (x @ truth)  # x @ truth has sd 1/8: logit sd 3
    return x, rng.random(len(x)) < 1 / (1 + np.exp(-logit)), np.repeat(classes, n)


def test_failure_directions_recover_a_planted_direction():
    rng = np.random.default_rng(5)
    truth = normalize(rng.normal(size=(1, D)))[0]
    x, err, cls = _logistic_errors(rng, 3000, truth)
    found = failure_directions(x, err, cls)
    assert len(found) == 3 and [d.auc for d in found] == sorted((d.auc for d in found), reverse=True)
    for d in found:
        assert d.auc > 0.8 and d.direction @ truth > 0.8
        assert abs(np.linalg.norm(d.direction) - 1) < 1e-9
        assert d.error_rate > d.class_error_rate  # the top rows fail more
        assert len(d.rows) == 300 and d.n_train + d.n_test == 3000
        assert np.allclose(d.score(x[:5]), normalize(x[:5]) @ d.direction)
        assert "direction" not in json.loads(json.dumps(d.to_dict()))


def test_failure_directions_null_auc_is_chance():
    """n = 4000 per class, errors at 20% independent of the embedding: held-out AUC (1200 rows,
    240 failures, sd ~0.02) within 0.5 +- 0.07; a class under min_errors failures is skipped."""
    rng = np.random.default_rng(6)
    x = normalize(rng.normal(size=(12000, D)))
    cls = np.repeat(["a", "b", "c"], 4000)
    err = rng.random(12000) < 0.2
    err[cls == "c"] = False
    err[np.flatnonzero(cls == "c")[:5]] = True
    found = failure_directions(x, err, cls)
    assert sorted(d.class_name for d in found) == ["a", "b"]
    assert all(abs(d.auc - 0.5) < 0.07 for d in found)


def _linear_losses(rng, n: int = 5000, dim: int = 32):
    x = normalize(rng.normal(size=(n, dim)))
    w = normalize(rng.normal(size=(1, dim)))[0]
    return x, 1.0 + 3.0 * (x @ w) + 0.05 * rng.normal(size=n), w


@pytest.mark.parametrize("model", ["mlp", "ridge"])
def test_diagnosis_learns_a_linear_loss(model):
    rng = np.random.default_rng(7)
    x, loss, _ = _linear_losses(rng)
    ens = DiagnosisEnsemble(model=model, seed=1).fit(x, loss)
    assert ens.r2 > 0.8 and ens.spearman > 0.9
    assert ens.n_train == 4000 and ens.n_test == 1000
    assert set(ens.summary()) == {"model", "members", "r2", "spearman", "n_train", "n_test"}
    # shuffled losses: no signal, held-out Spearman near 0 (1000 rows: sd ~0.03)
    assert abs(DiagnosisEnsemble(model=model, seed=1).fit(x, rng.permutation(loss)).spearman) < 0.1


def test_mlp_members_learn_a_failure_in_the_middle_of_an_attribute_that_ridge_cannot():
    """Loss high where the attribute x @ w is near 0 (a medium size between small and large):
    not a direction, so a linear member scores it near chance and the MLP does not."""
    rng = np.random.default_rng(11)
    x, _, w = _linear_losses(rng, n=4000, dim=16)
    s = x @ w
    loss = np.exp(-((s / 0.15) ** 2)) + 0.05 * rng.normal(size=len(s))
    mlp = DiagnosisEnsemble(model="mlp", seed=0).fit(x, loss)
    ridge = DiagnosisEnsemble(model="ridge", seed=0).fit(x, loss)
    assert mlp.spearman > 0.7 and abs(ridge.spearman) < 0.2, (mlp.spearman, ridge.spearman)
    # and it ranks the phrase of the middle first, where ridge cannot tell the three apart
    texts = np.stack([-0.5 * w, 0 * w, 0.5 * w]) + normalize(rng.normal(size=(1, 16)))  # small, medium, large
    ranked = rank_phrases(mlp, ["small", "medium", "large"], texts)
    assert ranked[0]["phrase"] == "medium"


def test_per_class_ensembles_see_a_failure_of_one_class():
    """Class b fails where the attribute is high, class a where it is low: one ensemble over both
    cancels out, one per class finds each (and a class below min_rows gets none)."""
    rng = np.random.default_rng(12)
    x, _, w = _linear_losses(rng, n=4000, dim=16)
    classes = np.where(np.arange(4000) % 2 == 0, "a", "b")
    classes[:30] = "rare"
    s = x @ w
    loss = np.where(classes == "a", -s, s) + 0.05 * rng.normal(size=4000)
    models = fit_per_class(x, loss, classes, min_rows=40, seed=0, model="ridge")
    assert set(models) == {"a", "b"}
    assert models["a"].spearman > 0.9 and models["b"].spearman > 0.9
    assert abs(DiagnosisEnsemble(model="ridge", seed=0).fit(x, loss).spearman) < 0.2
    assert models["a"].n_train + models["a"].n_test == int((classes == "a").sum())


@pytest.mark.parametrize("model", ["mlp", "ridge"])
def test_diagnosis_spread_grows_off_the_data(model):
    rng = np.random.default_rng(8)
    x, loss, _ = _linear_losses(rng, n=2000)
    ens = DiagnosisEnsemble(members=8, model=model, seed=0).fit(x, loss + 0.3 * rng.normal(size=len(loss)))
    _, on = ens.predict(x[:200])
    _, off = ens.predict(10 * normalize(rng.normal(size=(200, x.shape[1]))))
    assert off.mean() > 3 * on.mean()


def test_score_texts_ranks_the_high_loss_phrase_and_ignores_the_modality_gap():
    rng = np.random.default_rng(9)
    x, loss, w = _linear_losses(rng)
    ens = DiagnosisEnsemble().fit(x, loss)
    gap = 2.0 * normalize(rng.normal(size=(1, x.shape[1])))  # texts live elsewhere than images
    texts = gap + 0.3 * normalize(rng.normal(size=(6, x.shape[1])))
    texts[3] = gap[0] + 0.3 * w  # the phrase that describes the high-loss images
    phrases = [f"p{i}" for i in range(6)]
    ranked = rank_phrases(ens, phrases, texts)
    assert ranked[0]["phrase"] == "p3"
    assert [r["predicted_loss"] for r in ranked] == sorted((r["predicted_loss"] for r in ranked), reverse=True)
    moved, _ = ens.score_texts(texts + 5.0)
    assert np.allclose(moved, ens.score_texts(texts)[0])


def test_diagnosis_rejects_nan_losses():
    x = normalize(np.random.default_rng(10).normal(size=(50, 8)))
    loss = np.ones(50)
    loss[[4, 17]] = np.nan
    with pytest.raises(ValueError, match=r"NaN in 2 rows, e.g. rows \[4, 17\]"):
        DiagnosisEnsemble().fit(x, loss)
