"""Complements (verify.complements) on plain arrays: a mode of verified descriptions that all
spare one axis value proposes "the class, not that value"; it is proposed rarely where no value
is spared (calibration), tested like any hypothesis, and names the bug its mode merges into."""

import numpy as np
import pytest
from scipy.stats import binom

from vbugs_ray.report import format_bugs
from vbugs_ray.spec import parse_spec
from vbugs_ray.verify import complements
from vbugs_ray.verify.hypotheses import Hypothesis
from vbugs_ray.verify.plan import BASE, REF
from vbugs_ray.verify.verdicts import arms_of, explained_by, judge_round, merge_bugs


@pytest.fixture
def spec(spec_dict):
    return parse_spec(spec_dict)


def _h(cls, preds=(), phrases=(), rows=()):
    return Hypothesis(cls, tuple(preds), tuple(phrases), sources=({"kind": "slice"},), failing_rows=tuple(rows))


def _world(spec, tests, rate, n=200, seed=0, base=True):
    """Fresh arms drawn as a round draws them, an image failing with probability rate(h, values);
    every failure is called a circle."""
    rng = np.random.default_rng(seed)
    named = [(h.key, h) for h in tests]
    if base:
        named += [(BASE + c, _h(c)) for c in sorted({h.class_name for h in tests})]
    arms = {}
    for name, h in named:
        _, values = h.prompts(spec, rng, n)
        p = np.array([rate(h, {a: values[a][i] for a in values}) for i in range(n)])
        failed = rng.random(n) < p
        rows = {"hypothesis": np.full(n, name), "valid": np.ones(n, bool), "error": failed, "row_id": np.arange(n),
                "pred": np.where(failed, "circle", h.class_name), **{a: np.asarray(v) for a, v in values.items()}}
        arms.update(arms_of(rows, spec.axis_names))
    return arms


def _spurious(h, v):
    """Squares fail everywhere but on grass: worse at night and when small."""
    if v["background"] == "grass":
        return 0.02
    return 0.9 if v["lighting"] == "night" or "small" in h.phrases else 0.6


def _round_one(spec, rate, seed=0):
    night = _h("square", [("lighting", "night")], rows=range(0, 40))
    small = _h("square", [], ["small"], rows=range(30, 70))
    brick = _h("square", [("background", "brick")], rows=range(60, 100))
    tests = [night, small, brick]
    arms = _world(spec, tests, rate, seed=seed)
    return tests, arms, judge_round(tests, arms, 0.025, 1)


def test_a_mode_that_spares_one_value_proposes_its_complement_which_names_the_bug(spec):
    tests, arms, verdicts = _round_one(spec, _spurious)
    assert all(v.verified for v in verdicts.values())
    hypotheses = {h.key: h for h in tests}
    proposed = complements.propose(hypotheses, verdicts, arms, 0.025, tested=set(verdicts))
    assert len(proposed) == 1
    complement = proposed[0]
    assert complement.excluded == (("background", "grass"),) and complement.description(spec) == "square, not grass"
    assert complement.prompt_pattern(spec) == "a {colour} square on {background, not grass} {lighting}"
    assert complement.sources[0]["members"] == [h.key for h in tests]
    # its images never show grass, and draw the other backgrounds evenly
    _, values = complement.prompts(spec, np.random.default_rng(0), 2000)
    counts = {b: values["background"].count(b) for b in set(values["background"])}
    assert "grass" not in counts and min(counts.values()) > 450
    # round two: the complement is tested on fresh images against its reference, "square, grass"
    assert complement.reference == Hypothesis("square", (("background", "grass"),))
    arms2 = _world(spec, [complement, complement.reference], _spurious, seed=1)
    arms2[REF + complement.reference.key] = arms2.pop(complement.reference.key)
    round_two = judge_round([complement], arms2, 0.025, 2)
    verdict = round_two[complement.key]
    assert verdict.verified and verdict.against == "reference" and verdict.base_error_rate < 0.1
    hypotheses[complement.key] = complement
    arms.update({k: arms2[k] for k in (complement.key, REF + complement.reference.key)})
    # each member's failures lie inside "not grass"
    for h in tests:
        assert explained_by(complement, h, arms, 0.025)
    bugs = merge_bugs(spec, hypotheses, {**verdicts, **round_two}, arms, 0.025)
    assert len(bugs) == 1
    bug = bugs[0]
    assert bug["description"] == "square, not grass"
    assert {e["description"] for e in bug["evidence"]} == {"square, not grass", "square, at night", "square, small",
                                                            "square, brick"}
    assert bug["severity_from"] in ("square, at night", "square, small")  # its worst form, against the base
    assert bug["tested_against"] == "square, grass"
    table = format_bugs({"verified_bugs": bugs, "hypotheses": [], "verification": {}})
    assert "     base: fresh images of square, grass (fails without it, not with it)" in table, table


def test_no_complement_where_no_value_is_spared(spec):
    """Squares fail at night and when small, on every background alike: over 200 worlds, a mode
    proposes a complement in at most alpha of them (binomial bound)."""
    def rate(h, v):
        return 0.8 if v["lighting"] == "night" or "small" in h.phrases else 0.1

    proposals = 0
    worlds = 200
    for seed in range(worlds):
        night = _h("square", [("lighting", "night")])
        small = _h("square", [], ["small"])
        arms = _world(spec, [night, small], rate, n=150, seed=seed, base=False)
        verdicts = {h.key: _verified(h.key, arms[h.key]) for h in (night, small)}
        proposals += bool(complements.propose({h.key: h for h in (night, small)}, verdicts, arms, 0.05, set()))
    assert proposals <= binom.ppf(0.99, worlds, 0.05), proposals


def test_one_bad_value_does_not_make_another_look_spared(spec):
    """Squares fail on brick (0.9) and, on every background alike, at night or in fog (0.6): no
    value is spared, and over 100 worlds a mode proposes a complement in at most alpha of them
    (binomial bound). A one-against-the-rest comparison would call any of grass, sand, snow,
    water spared here, since brick lifts the rest."""
    def rate(h, v):
        if v["background"] == "brick":
            return 0.9
        return 0.6 if v["lighting"] in ("night", "fog") else 0.05

    proposals, worlds = 0, 100
    for seed in range(worlds):
        members = [_h("square", [("lighting", "night")]), _h("square", [("lighting", "fog")]),
                   _h("square", [("background", "brick")])]
        arms = _world(spec, members, rate, n=150, seed=seed, base=False)
        verdicts = {h.key: _verified(h.key, arms[h.key]) for h in members}
        proposals += bool(complements.propose({h.key: h for h in members}, verdicts, arms, 0.05, set()))
    assert proposals <= binom.ppf(0.99, worlds, 0.05), proposals


def _verified(key, arm):
    from vbugs_ray.verify.verdicts import Verdict

    return Verdict(key=key, round=1, n=arm.n, errors=arm.errors, error_rate=arm.errors / arm.n, base_n=arm.n,
                   base_errors=0, base_error_rate=0.0, ci_low=0.5, ci_high=0.9, p_value=1e-9, q_value=1e-8,
                   verified=True, top_wrong_predictions=[["circle", arm.errors]], row_ids=[])


def test_one_verified_description_or_unlike_confusions_propose_nothing(spec):
    tests, arms, verdicts = _round_one(spec, _spurious)
    night = tests[0]
    assert complements.propose({night.key: night}, {night.key: verdicts[night.key]}, arms, 0.025, set()) == []
    confused_otherwise = dict(verdicts)
    small = tests[1].key
    confused_otherwise[small] = _verified(small, arms[small])
    confused_otherwise[small].top_wrong_predictions = [["star", arms[small].errors]]
    pair = {k: confused_otherwise[k] for k in (night.key, small)}
    assert complements.propose({h.key: h for h in tests[:2]}, pair, arms, 0.025, set()) == []
    # a complement already tested is not proposed again
    proposed = complements.propose({h.key: h for h in tests}, verdicts, arms, 0.025, set())
    assert complements.propose({h.key: h for h in tests}, verdicts, arms, 0.025, {proposed[0].key}) == []


def test_an_exclusion_is_a_part_like_any_other(spec):
    h = Hypothesis("square", (("lighting", "night"),), excluded=(("background", "grass"),))
    assert h.parts == [("lighting", "night"), ("!background", "grass")]
    assert h.description(spec) == "square, at night, not grass"
    child = h.without(("!background", "grass"))
    assert child.excluded == () and child.removed == "background!=grass" and child.predicates == h.predicates
    assert Hypothesis.from_state(h.state()) == h
    assert h.key != Hypothesis("square", (("lighting", "night"),)).key
    assert Hypothesis("square", (("lighting", "night"),)).key == _h("square", [("lighting", "night")]).key


def test_a_round_plans_a_complements_reference_arm_apart(spec):
    from vbugs_ray.verify.plan import plan_round

    complement = Hypothesis("square", (), excluded=(("background", "grass"),))
    grass = Hypothesis("square", (("background", "grass"),))
    table = plan_round(spec, [complement], ["square"], 20, 1000, set(), 2).to_pydict()
    by_arm = {arm: [i for i, a in enumerate(table["arm"]) if a == arm] for arm in set(table["arm"])}
    assert {arm: len(rows) for arm, rows in by_arm.items()} == {"hypothesis": 20, "reference": 20, "base": 20}
    assert {table["background"][i] for i in by_arm["reference"]} == {"grass"}
    assert "grass" not in {table["background"][i] for i in by_arm["hypothesis"]}
    assert {table["hypothesis"][i] for i in by_arm["reference"]} == {REF + grass.key}
    # "square, grass" tested in the same round keeps its own rows: the reference arm never shares them
    both = plan_round(spec, [complement, grass], ["square"], 20, 1000, set(), 2).to_pydict()
    assert both["hypothesis"].count(REF + grass.key) == 20 and both["hypothesis"].count(grass.key) == 20


def test_a_complement_names_the_siblings_it_contains(spec):
    """Crosses fail unless red: round 1 verifies 'cross, green', 'cross, blue', 'cross, yellow'
    (siblings: one bug); the complement 'cross, not red' joins them as their sibling and, as the
    one description that contains them all, names the bug."""
    def rate(h, v):  # the members fail a little more: without containment one of them would name the bug
        return 0.02 if v["colour"] == "red" else 0.97 if h.predicates else 0.85

    members = [_h("cross", [("colour", c)]) for c in ("green", "blue", "yellow")]
    complement = Hypothesis("cross", (), excluded=(("colour", "red"),))
    arms = _world(spec, [*members, complement, complement.reference], rate, n=400)
    arms[REF + complement.reference.key] = arms.pop(complement.reference.key)
    verdicts = judge_round([*members, complement], arms, 0.025, 1)
    assert all(v.verified for v in verdicts.values())
    bugs = merge_bugs(spec, {h.key: h for h in [*members, complement]}, verdicts, arms, 0.025)
    assert [b["description"] for b in bugs] == ["cross, not red"]
    assert len(bugs[0]["evidence"]) == 4
