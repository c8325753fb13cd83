"""The CLIP filter: rows whose image does not show their class (or shift) are kept, marked
invalid with the reason, and left out of slice statistics."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbugs_ray.grid import build_grid
from vbugs_ray.pipeline import EmbedStage, GenerateStage
from vbugs_ray.slices.parquet import parquet_counter, parquet_files, shard_pieces
from vbugs_ray.errors import SpecError
from vbugs_ray.spec import parse_spec


@pytest.mark.trains
def test_filter_marks_images_of_the_wrong_class(spec_dict):
    spec_dict["filter"] = {"class_top_k": 1}
    spec = parse_spec(spec_dict)
    grid = build_grid(spec)
    rows = grid.take(np.random.default_rng(0).choice(grid.num_rows, 80, replace=False))
    batch = GenerateStage(spec)({n: rows.column(n).to_numpy(zero_copy_only=False) for n in rows.column_names})
    labels = batch["label"]
    # the second half of the rows get another row's image, of another class: a failed generation
    swapped = np.zeros(80, bool)
    images = batch["image"].copy()
    for i in range(40, 80):
        j = next(j for j in range(80) if labels[j] != labels[i])
        images[i], swapped[i] = batch["image"][j], True
    batch["image"] = images
    out = EmbedStage(spec)(batch)
    assert out["valid"][swapped].mean() <= 0.05  # wrong class: marked
    assert out["valid"][~swapped].mean() >= 0.9  # right class: kept valid
    assert all(r == "class_rank" for r in out["filter_reason"][swapped & ~out["valid"]])
    assert all(r == "" for r in out["filter_reason"][out["valid"]])
    assert len(out["valid"]) == 80  # marked, never dropped


def test_invalid_rows_are_left_out_of_slice_counts(tmp_path):
    rng = np.random.default_rng(1)
    n = 2000
    colour = rng.choice(["red", "blue"], n)
    error = rng.random(n) < 0.1
    valid = rng.random(n) < 0.8
    error[(colour == "red") & ~valid] = True  # every invalid red row fails: it must not count
    pq.write_table(pa.table({"colour": colour, "error": error, "valid": valid}), tmp_path / "t.parquet")
    counter = parquet_counter(shard_pieces(parquet_files(tmp_path)), "error", ["colour"], valid_col="valid")
    n_rows, n_errors, _, _ = counter.totals()
    assert (n_rows, n_errors) == (int(valid.sum()), int(error[valid].sum()))
    counts = counter.count([(0,)])[(0,)]
    red = counter.values[0].index("red")
    assert counts.n[red] == int(((colour == "red") & valid).sum())
    assert counts.errors[red] == int(((colour == "red") & valid & error).sum())


@pytest.mark.parametrize("section, field", [
    ({}, "filter"),
    ({"class_top_k": 0}, "filter.class_top_k"),
    ({"min_class_similarity": 2}, "filter.min_class_similarity"),
    ({"min_class_similarity": 0.2, "class_prompt": "a photo"}, "filter.class_prompt"),
    ({"min_shift_similarity": 0.1, "shift_prompt": "{class}"}, "filter.shift_prompt"),
    ({"class_top_k": 1, "strict": True}, "filter.strict"),
])
def test_bad_filter_sections_name_the_field(spec_dict, section, field):
    spec_dict["filter"] = section
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict)
    assert err.value.field == field
