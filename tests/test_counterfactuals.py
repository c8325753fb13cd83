"""Counterfactual pairs (verify.counterfactuals): which changes a verified bug's failing images
are made again under, and how the pairs are counted."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from vbugs_ray.spec import parse_spec
from vbugs_ray.verify.counterfactuals import changes, plan, summarise
from vbugs_ray.verify.hypotheses import Hypothesis


def test_each_fixed_value_is_swapped_an_excluded_one_shown_and_phrases_dropped_where_drawn(spec_dict):
    spec = parse_spec(spec_dict)
    night = Hypothesis("star", (("lighting", "night"),), ("heavy clutter",))
    labels = [c.label for c in changes(spec, night, {"lighting": "night", "background": "sand"}, draws=True)]
    assert labels == ["lighting: night -> day", "lighting: night -> dusk", "lighting: night -> fog",
                      "without heavy clutter"]
    assert "without heavy clutter" not in [c.label for c in changes(spec, night, {}, draws=False)]  # a dataset's
    off_grass = Hypothesis("square", (), excluded=(("background", "grass"),))
    (show,) = changes(spec, off_grass, {"background": "sand"}, draws=True)
    assert show.label == "background: not grass -> grass" and show.values == {"background": "grass"}


def test_pairs_keep_the_seed_and_every_other_value_and_count_what_the_change_fixed(spec_dict):
    spec = parse_spec(spec_dict)
    h = Hypothesis("star", (("lighting", "night"),))
    rows = {"row_id": np.array([10, 11, 12]), "seed": np.array([7, 8, 9]), "error": np.array([True, False, True]),
            "valid": np.array([True, True, True]), "lighting": np.array(["night"] * 3),
            "background": np.array(["sand", "snow", "water"]), "colour": np.array(["red", "blue", "green"])}
    bug = {"hypothesis": h.key, "row_ids": [10, 11, 12]}
    table = plan(spec, [bug], {h.key: h}, rows, first_row_id=100, draws=True)
    assert table.num_rows == 2 * 3  # the two failing rows, three other lightings each
    assert table.column("row_id").to_pylist() == list(range(100, 106))
    day = table.filter(pa.compute.equal(table.column("change"), "lighting: night -> day")).to_pylist()
    assert [(r["pair_of"], r["seed"], r["background"], r["colour"], r["lighting"]) for r in day] == \
        [(10, 7, "sand", "red", "day"), (12, 9, "water", "green", "day")]
    assert "at night" not in day[0]["prompt"] and "in daylight" in day[0]["prompt"]
    made = {"row_id": table.column("row_id").to_numpy(), "valid": np.array([True] * 5 + [False]),
            "error": np.array([False, True, True, False, True, True])}
    summarise([bug], table, made)
    found = {c["change"]: (c["fixed"], c["n"]) for c in bug["counterfactuals"]}
    assert found == {"lighting: night -> day": (2, 2), "lighting: night -> dusk": (0, 2),
                     "lighting: night -> fog": (0, 1)}  # an invalid counterpart is no pair
    assert bug["counterfactuals"][0]["change"] == "lighting: night -> day"  # the most fixing first
    assert bug["counterfactuals"][0]["pairs"] == [[10, 100], [12, 103]]
