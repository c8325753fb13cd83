"""Verification on plain data: hypotheses and their prompts, fresh seeds, the round's test
(calibration and power), pruning and merging into bugs. End-to-end runs: test_verify_run.py."""

from collections import Counter

import numpy as np
import pytest
from scipy.stats import binom

from vbugs_ray.report import format_bugs
from vbugs_ray.spec import parse_spec
from vbugs_ray.verify.hypotheses import Hypothesis, deduplicate, split_phrases
from vbugs_ray.verify.plan import BASE, fresh_seeds, plan_round
from vbugs_ray.verify.verdicts import (Arm, arms_of, confusion_distance, explained_by, judge_round, merge_bugs,
                                      part_needed)


@pytest.fixture
def spec(spec_dict):
    return parse_spec(spec_dict)


def _h(spec, cls="star", preds=(), phrases=(), rows=(), kind="slice"):
    return Hypothesis(cls, tuple(preds), tuple(phrases), sources=({"kind": kind},), failing_rows=tuple(rows))


def test_hypothesis_prompts_fix_the_description_and_draw_the_rest(spec):
    h = _h(spec, "star", [("lighting", "night")], ["heavy clutter"])
    assert h.description(spec) == "star, at night, heavy clutter"
    assert h.prompt_pattern(spec) == "a {colour} star on {background} at night, heavy clutter"
    prompts, values = h.prompts(spec, np.random.default_rng(0), 600)
    assert all(p.startswith("a ") and " star on " in p and p.endswith(" at night, heavy clutter") for p in prompts)
    assert set(values["lighting"]) == {"night"}
    counts = Counter(values["background"])  # open axes are uniform over the spec's values
    assert set(counts) == set(spec.axes[0].values) and min(counts.values()) > 600 / 5 * 0.7
    assert h.key == _h(spec, "star", [("lighting", "night")], ["heavy clutter"], kind="cluster").key
    assert h.key != _h(spec, "square", [("lighting", "night")], ["heavy clutter"]).key


def test_parts_children_and_deduplication(spec):
    h = _h(spec, "star", [("background", "snow"), ("lighting", "night")], ["small"], rows=[1, 2])
    assert h.parts == [("background", "snow"), ("lighting", "night"), ("", "small")]
    child = h.without(("lighting", "night"))
    assert child.parts == [("background", "snow"), ("", "small")] and child.parent == h.key
    assert child.removed == "lighting=night" and h.without(("", "small")).removed == "small"
    same = _h(spec, "star", [("background", "snow"), ("lighting", "night")], ["small"], rows=[2, 3], kind="cluster")
    merged = deduplicate([h, same, child])
    assert len(merged) == 2
    top = next(m for m in merged if m.key == h.key)
    assert [s["kind"] for s in top.sources] == ["slice", "cluster"] and top.failing_rows == (1, 2, 3)


def test_caption_phrases_become_parts_one_per_exclusive_group(spec):
    # axis words -> predicates; class names dropped; of two backgrounds / two sizes the first wins
    preds, free = split_phrases(spec, ["at night", "star", "snow", "grass", "small", "large", "heavy clutter"])
    assert preds == (("background", "snow"), ("lighting", "night"))
    assert free == ("small", "heavy clutter")


def test_fresh_seeds_avoid_every_used_seed_and_are_reproducible():
    used = set(range(0, 2**31, 7919))
    before = set(used)
    seeds = fresh_seeds(0, "h1", 500, used)
    assert len(set(seeds.tolist())) == 500 and not set(seeds.tolist()) & before
    assert set(seeds.tolist()) <= used  # now recorded as used
    assert fresh_seeds(0, "h1", 500, set(before)).tolist() == seeds.tolist()
    assert fresh_seeds(0, "h2", 500, set(before)).tolist() != seeds.tolist()
    # a used set holding the stream's first seeds: those are skipped, never reused
    first = fresh_seeds(0, "h3", 10, set())
    again = fresh_seeds(0, "h3", 10, set(first[:5].tolist()))
    assert not set(again.tolist()) & set(first[:5].tolist())


def test_round_plan_rows(spec):
    tests = [_h(spec, "star", [("lighting", "night")]), _h(spec, "square", [], ["small"])]
    used = {1, 2, 3}
    table = plan_round(spec, tests, ["star", "square"], 20, 1000, used, 1)
    assert table.num_rows == 80
    assert table.column("row_id").to_pylist() == list(range(1000, 1080))
    arms = Counter(table.column("hypothesis").to_pylist())
    assert arms == {tests[0].key: 20, tests[1].key: 20, BASE + "star": 20, BASE + "square": 20}
    rows = table.to_pylist()
    assert all(r["lighting"] == "night" and r["class"] == "star" for r in rows if r["hypothesis"] == tests[0].key)
    assert all(r["prompt"].endswith(", small") for r in rows if r["hypothesis"] == tests[1].key)
    assert all(r["label"] == spec.classes.index(r["class"]) for r in rows)
    seeds = table.column("seed").to_pylist()
    assert len(set(seeds)) == 80 and not {1, 2, 3} & set(seeds)
    assert plan_round(spec, tests, ["star", "square"], 20, 1000, {1, 2, 3}, 1).equals(table)


def _arms(rng, rates, base_rate, n):
    arms = {BASE + "star": Arm(n, int(rng.binomial(n, base_rate)), [], Counter())}
    for key, rate in rates.items():
        arms[key] = Arm(n, int(rng.binomial(n, rate)), [], Counter())
    return arms


def test_round_test_is_calibrated_under_the_null():
    """Null: every hypothesis's images fail like the base (rate 0.2). Over 2,000 simulated rounds
    of 12 hypotheses sharing one base arm, the share of rounds with any verified hypothesis stays
    within binomial error of alpha or below (BH under the global null controls that chance)."""
    rng = np.random.default_rng(1)
    alpha, runs = 0.05, 2000
    tests = [Hypothesis("star", (("lighting", str(i)),)) for i in range(12)]
    any_verified = 0
    for _ in range(runs):
        arms = _arms(rng, {h.key: 0.2 for h in tests}, 0.2, 100)
        verdicts = judge_round(tests, arms, alpha, 1)
        any_verified += any(v.verified for v in verdicts.values())
        assert all(v.q_value >= v.p_value * (1 - 1e-12) for v in verdicts.values())
    limit = binom.ppf(0.99, runs, alpha)
    assert any_verified <= limit, f"{any_verified} of {runs} null rounds verified something (limit {limit:.0f})"
    assert binom.cdf(limit, runs, 2 * alpha) < 0.01  # a procedure at 2x alpha would fail this test


def test_round_test_has_power_and_is_one_sided():
    rng = np.random.default_rng(2)
    tests = [Hypothesis("star", (("lighting", "night"),)), Hypothesis("star", (("lighting", "day"),)),
             Hypothesis("star", (("lighting", "fog"),))]
    found = {t.key: 0 for t in tests}
    for _ in range(200):
        arms = _arms(rng, {tests[0].key: 0.45, tests[1].key: 0.02, tests[2].key: 0.2}, 0.2, 200)
        for key, v in judge_round(tests, arms, 0.05, 1).items():
            found[key] += v.verified
    assert found[tests[0].key] >= 195  # 0.45 vs 0.2 at n=200: power near 1
    assert found[tests[1].key] == 0  # fails *less* than the base: never a bug (one-sided)
    assert found[tests[2].key] <= 10  # the null one


def _verdict(key, errors, n=200, base=40, wrong=None):
    from vbugs_ray.verify.verdicts import Verdict

    return Verdict(key=key, round=1, n=n, errors=errors, error_rate=errors / n, base_n=n, base_errors=base,
                   base_error_rate=base / n, ci_low=errors / n - 0.05, ci_high=errors / n + 0.05, p_value=1e-9,
                   q_value=1e-8, verified=True, top_wrong_predictions=wrong or [["cross", errors]], row_ids=[])


def test_a_part_is_needed_only_if_dropping_it_lowers_failures():
    assert part_needed(_verdict("p", 180), _verdict("c", 100), 0.05)
    assert not part_needed(_verdict("p", 120), _verdict("c", 118), 0.05)


def test_merging_one_failure_one_bug(spec):
    night = _h(spec, "star", [("lighting", "night")], rows=range(0, 50))
    night_green = _h(spec, "star", [("lighting", "night"), ("colour", "green")], rows=range(0, 10))
    clutter = _h(spec, "star", [], ["heavy clutter"], rows=range(100, 150))
    both = _h(spec, "star", [("lighting", "night")], ["heavy clutter"], rows=range(40, 110))
    square = _h(spec, "square", [("lighting", "night")], rows=range(0, 50))
    hyps = {h.key: h for h in (night, night_green, clutter, both, square)}
    verdicts = {night.key: _verdict(night.key, 140, wrong=[["cross", 70], ["triangle", 70]]),
                night_green.key: _verdict(night_green.key, 170, wrong=[["cross", 85], ["triangle", 85]]),
                clutter.key: _verdict(clutter.key, 120, wrong=[["circle", 120]]),
                both.key: _verdict(both.key, 190, wrong=[["cross", 60], ["circle", 130]]),
                square.key: _verdict(square.key, 140, wrong=[["cross", 70], ["triangle", 70]])}
    bugs = merge_bugs(spec, hyps, verdicts, {}, 0.05)
    names = sorted(b["description"] for b in bugs)
    # the green refinement joins its bug, named by the simpler description; the conjunction of two
    # bugs that each verified alone links neither; another class is another bug
    assert names == sorted(["star, at night", "star, heavy clutter", "star, at night, heavy clutter",
                            "square, at night"])
    star_night = next(b for b in bugs if b["description"] == "star, at night")
    assert {e["description"] for e in star_night["evidence"]} == {"star, at night", "star, at night, green"}
    assert bugs == sorted(bugs, key=lambda b: -b["severity"])
    assert confusion_distance(verdicts[night.key], verdicts[night_green.key]) == 0
    assert confusion_distance(verdicts[night.key], verdicts[clutter.key]) == 1.0
    unverified = dict(verdicts)
    unverified[night_green.key] = _verdict(night_green.key, 170)
    unverified[night_green.key].verified = False
    assert all(e["description"] != "star, at night, green" for b in merge_bugs(spec, hyps, unverified, {}, 0.05)
               for e in b["evidence"])


def _world(spec, tests, rate, n=600, seed=0):
    """Fresh arms drawn as a round draws them (open axes at random) in a world where an image of
    hypothesis ``h`` with axis values ``v`` fails with probability ``rate(h, v)``; every failure
    is called a cross, so confusions never tell two failures apart."""
    rng = np.random.default_rng(seed)
    arms = {}
    named = [(h.key, h) for h in tests] + [(BASE + c, _h(spec, c)) for c in sorted({h.class_name for h in tests})]
    for name, h in named:
        _, values = h.prompts(spec, rng, n)
        p = np.array([rate(h, {a: values[a][i] for a in values}) for i in range(n)])
        failed = rng.random(n) < p
        rows = {"hypothesis": np.full(n, name), "valid": np.ones(n, bool), "error": failed, "row_id": np.arange(n),
                "pred": np.where(failed, "cross", h.class_name), **{a: np.asarray(v) for a, v in values.items()}}
        arms.update(arms_of(rows, spec.axis_names))
    return arms


def test_alike_failures_are_one_bug_only_when_the_fresh_images_say_so(spec):
    """Stars fail at night (worse in heavy clutter) and, separately, when medium-sized; squares
    fail on brick and on sand. Every failure is a cross and every hypothesis was drawn from the
    same failing rows, so only the fresh images' open axes can tell the failures apart: the
    medium star fails beyond 'at night' (two bugs), the cluttered star fails only at night (one),
    and brick and sand are the same property with other values (siblings: one)."""
    def rate(h, v):
        if h.class_name == "square":
            return 0.6 if v["background"] in ("brick", "sand") else 0.1
        if v["lighting"] == "night":
            return 0.95 if "heavy clutter" in h.phrases else 0.6
        return 0.5 if "medium" in h.phrases else 0.1

    night = _h(spec, "star", [("lighting", "night")], rows=range(50))
    medium = _h(spec, "star", [], ["medium"], rows=range(50))
    clutter = _h(spec, "star", [], ["heavy clutter"], rows=range(50))
    brick = _h(spec, "square", [("background", "brick")], rows=range(50))
    sand = _h(spec, "square", [("background", "sand")], rows=range(50))
    tests = [night, medium, clutter, brick, sand]
    arms = _world(spec, tests, rate)
    verdicts = judge_round(tests, arms, 0.05, 1)
    assert all(v.verified for v in verdicts.values())
    bugs = merge_bugs(spec, {h.key: h for h in tests}, verdicts, arms, 0.05)
    groups = sorted(sorted(e["description"] for e in b["evidence"]) for b in bugs)
    assert groups == [["square, brick", "square, sand"], ["star, at night", "star, heavy clutter"], ["star, medium"]]
    star_night = next(b for b in bugs if b["description"] == "star, at night")
    medium_star = next(b for b in bugs if b["description"] == "star, medium")
    # two failures, one mode: both stars called a cross; squares are another mode
    assert star_night["mode"] == medium_star["mode"] != next(b for b in bugs if b["class"] == "square")["mode"]
    assert sorted({b["mode"] for b in bugs}) == [1, 2] and bugs[0]["mode"] == 1
    assert set(star_night["by_open_axis"]) == {"background", "colour"}  # the axes the description leaves open
    assert sum(n for _, n in star_night["by_open_axis"]["background"].values()) == star_night["n"]
    table = format_bugs({"verified_bugs": bugs, "hypotheses": [], "verification": {}})
    first_star = min(i for i, b in enumerate(bugs, 1) if b["class"] == "star")
    other_star = max(i for i, b in enumerate(bugs, 1) if b["class"] == "star")
    assert f"same mode (called cross): #{other_star} " in table and table.count("same mode") == 1, table
    assert f"{first_star:>3}  star" in table and table.count("\n     by ") == len(bugs)  # each: its widest open axis
    # with no fresh rows to look at, looking alike is not enough to merge anything but siblings
    blind = merge_bugs(spec, {h.key: h for h in tests}, verdicts, {}, 0.05)
    assert sorted(len(b["evidence"]) for b in blind) == [1, 1, 1, 2]


def test_explained_by_is_calibrated_and_has_power(spec):
    """Null true (a cluttered star fails more only at night): 'at night' explains it in at least
    1 - alpha of worlds. Null false (a small star fails everywhere): not explained in most."""
    def rate(h, v):
        night = v["lighting"] == "night"
        return 0.9 if night and "heavy clutter" in h.phrases else 0.5 if night else 0.35 if "small" in h.phrases else 0.1

    night = _h(spec, "star", [("lighting", "night")])
    clutter, small = _h(spec, "star", [], ["heavy clutter"]), _h(spec, "star", [], ["small"])
    explained = {"clutter": 0, "small": 0}
    for seed in range(100):
        arms = _world(spec, [night, clutter, small], rate, n=200, seed=seed)
        explained["clutter"] += explained_by(night, clutter, arms, 0.05)
        explained["small"] += explained_by(night, small, arms, 0.05)
    assert explained["clutter"] >= 90  # alpha 0.05: about 95 expected
    assert explained["small"] <= 10  # 0.35 vs 0.1 on ~150 images each: power near 1


def _run_rows(spec, rate, n=3000, seed=0):
    """Run rows over the spec's axes (uniform), an error with probability ``rate(class, values)``."""
    from vbugs_ray.verify.sources import RunRows

    rng = np.random.default_rng(seed)
    classes = rng.choice(["star", "triangle"], n)
    features = {a.name: rng.choice(a.values, n) for a in spec.axes}
    p = np.array([rate(c, {a: features[a][i] for a in features}) for i, c in enumerate(classes)])
    errors = rng.random(n) < p
    return RunRows(np.arange(n), classes, errors, errors.astype(float), np.where(errors, "cross", classes),
                   features, np.zeros((n, 4), np.float32))


def test_class_slices_find_an_easy_class_failure_the_run_wide_search_hides(spec):
    """Triangles fail 12% in daylight and 1% elsewhere; stars fail 30% everywhere. Against every
    other image (run-wide base ~16%) the daylight triangles are not elevated; against the other
    triangles they are, and the class's own search proposes them."""
    from vbugs_ray.slices.search import search_slices
    from vbugs_ray.verify.sources import from_class_slices

    rows = _run_rows(spec, lambda c, v: 0.3 if c == "star" else 0.12 if v["lighting"] == "day" else 0.01)
    run_wide = search_slices({"class": rows.classes, **rows.features}, rows.errors, spec.search)
    assert not [s for s in run_wide.flagged if s["predicates"].get("class") == "triangle"]
    found = from_class_slices(rows, spec)
    triangles = [h for h in found if h.class_name == "triangle"]
    assert triangles and ("lighting", "day") in triangles[0].predicates
    assert triangles[0].sources[0]["kind"] == "class_slice"
    assert set(triangles[0].failing_rows) <= set(np.nonzero(rows.errors)[0].tolist())
    assert not [h for h in found if h.class_name == "star"]  # stars fail alike everywhere


def test_class_slices_are_calibrated_when_errors_ignore_the_axes(spec):
    """Null: within each class the error rate does not depend on the axes. BH over each class's
    lattice keeps the chance that a class proposes anything near alpha (0.05): over 20 runs of 2
    classes, about 2 classes propose a slice; more than 6 would mean the search is miscalibrated."""
    from vbugs_ray.verify.sources import from_class_slices

    proposing = 0
    for seed in range(20):
        rows = _run_rows(spec, lambda c, v: 0.3 if c == "star" else 0.05, seed=seed)
        proposing += len({h.class_name for h in from_class_slices(rows, spec)})
    assert proposing <= 6
