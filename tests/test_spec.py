import numpy as np
import pytest
from scipy import stats as sps

from vbugs_ray.grid import build_grid, n_cells
from vbugs_ray.errors import SpecError
from vbugs_ray.roles.registry import validate_backends
from vbugs_ray.spec import load_spec, parse_spec


def test_default_spec_loads(default_spec):
    assert default_spec.classes[0] == "circle"
    assert default_spec.axis_names == ("background", "lighting", "colour")
    assert default_spec.classifier.backend == "toyworld_cnn"


def _mutate(spec_dict, path, value):
    node = spec_dict
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec_dict


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, field, words",
    [
        ("generator.backend", "dalle9", "generator.backend", "unknown backend 'dalle9'; known: corruptions, dataset, diffusers, toyworld"),
        ("classes", [], "classes", "non-empty list"),
        ("axes.lighting", [], "axes.lighting", "no values"),
        ("budget", 0, "budget", "must be > 0"),
        ("budget", -5, "budget", "must be > 0"),
        ("serach", {"alpha": 0.1}, "serach", "unknown key; allowed: name, classes"),
        ("search.alpha", 1.5, "search.alpha", "must be <= 1"),
        ("search.max_order", 7, "search.max_order", "must be <= 5"),
        ("search.fdr", "bonferroni", "search.fdr", "allowed: bh, alpha_investing"),
        ("search.bogus", 1, "search.bogus", "unknown key; allowed: alpha"),
        ("prompt", "a {class} on {background}", "prompt", "does not mention {lighting}"),
        ("prompt", "a {class} {colour} {background} {lighting} {size}", "prompt", "{size} is neither"),
        ("axes.weather", ["rain"], "axes.weather", "no axis 'weather'"),
        ("axes.colour", ["red", "mauve"], "axes.colour", "cannot draw colour 'mauve'"),
        ("classes", ["circle", "hexagon"], "classes[1]", "draws no 'hexagon'"),
        ("classifier.options.bugs", [{"where": {"class": "star"}}], "classifier.options.bugs[0]", "give keep"),
        ("classifier.options.bugs", [{"where": {"class": "star"}, "keep": 1.5}], "classifier.options.bugs[0].keep", "[0, 1)"),
        ("classifier.options.bugs", [{"where": {"colour": "mauve"}, "keep": 0.1}], "classifier.options.bugs[0].where.colour", "unknown value"),
        ("classifier.options.epochs", 0, "classifier.options.epochs", "must be >= 1"),
        ("classifier.batch_size", "big", "classifier.batch_size", "expected an integer"),
        ("classifier.device", "tpu", "classifier.device", "expected auto, cpu"),
        ("run.executor", "spark", "run.executor", "allowed: ray, local"),
        ("generator.options.dpi", 300, "generator.options.dpi", "unknown option; allowed: resolution"),
        ("embedder.options.stepz", 5, "embedder.options.stepz", "unknown option; allowed: steps, seed"),
        ("embedder", _DELETE, "embedder", "is required"),
        ("search.alpha", float("nan"), "search.alpha", "must be a finite number; got nan"),
        ("search.min_effect", float("inf"), "search.min_effect", "must be a finite number; got inf"),
        ("classifier.num_cpus", float("nan"), "classifier.num_cpus", "must be a finite number; got nan"),
        ("generator.options.resolution", -float("inf"), "generator.options.resolution", "finite number; got -inf"),
    ],
)
def test_spec_errors_name_the_field(spec_dict, path, value, field, words):
    if path == "budget":
        spec_dict.pop("images_per_cell", None)
    if path == "axes.weather":
        spec_dict["prompt"] += " {weather}"
    spec_dict["embedder"].setdefault("options", {})
    with pytest.raises(SpecError) as err:
        validate_backends(parse_spec(_mutate(spec_dict, path, value)))
    message = str(err.value)
    assert err.value.field == field
    assert message.startswith(f"spec field '{field}':")
    assert words in message
    assert "\n" not in message


def test_both_sizes_given_is_an_error(spec_dict):
    spec_dict["images_per_cell"] = 3
    with pytest.raises(SpecError, match="either images_per_cell or budget"):
        parse_spec(spec_dict)


def test_load_spec_reports_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a, b\naxes: {")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_grid_is_deterministic_and_balanced(spec_dict):
    a = build_grid(parse_spec(spec_dict))
    b = build_grid(parse_spec(spec_dict))
    assert a.equals(b)
    spec = parse_spec(spec_dict)
    assert a.num_rows == spec.budget
    counts = a.group_by("cell").aggregate([("row_id", "count")]).column("row_id_count").to_pylist()
    assert len(counts) == n_cells(spec) and max(counts) - min(counts) <= 1
    first = a.slice(0, 1).to_pylist()[0]
    assert first["prompt"] == "a red circle on grass in daylight"
    assert a.column("row_id").to_pylist() == list(range(a.num_rows))


def test_grid_seeds_depend_on_spec_seed_and_cell_only(spec_dict):
    spec_dict.pop("budget")
    spec_dict["images_per_cell"] = 2
    small = build_grid(parse_spec(spec_dict))
    spec_dict["images_per_cell"] = 3
    large = build_grid(parse_spec(spec_dict))
    key = lambda t: {(c, r): s for c, r, s in zip(*(t.column(n).to_pylist() for n in ("cell", "replicate", "seed")))}
    small_seeds, large_seeds = key(small), key(large)
    assert all(large_seeds[k] == v for k, v in small_seeds.items())
    assert len(set(large_seeds.values())) == len(large_seeds)
    spec_dict["seed"] = 1
    assert key(build_grid(parse_spec(spec_dict))) != large_seeds


def _cell_counts_of(spec_dict):
    spec = parse_spec(spec_dict)
    cells = build_grid(spec).column("cell").to_numpy()
    return cells, np.bincount(cells, minlength=n_cells(spec))


def test_random_sampling_rule_is_seeded(spec_dict):
    """``sampling: random`` draws each image's cell independently and uniformly (a multinomial
    draw of the budget over the cells), seeded by the spec. Null of the dispersion check: the
    per-cell counts are such a draw; two-sided (balanced counts are far too even, a draw that
    piles images into few cells far too uneven), at 1% (one check, no correction needed)."""
    spec_dict["sampling"] = "random"
    a, counts = _cell_counts_of(spec_dict)
    b, _ = _cell_counts_of(spec_dict)
    np.testing.assert_array_equal(a, b)  # same spec, same rows
    budget, cells = spec_dict["budget"], len(counts)
    assert len(a) == budget and counts.sum() == budget
    assert np.all(np.diff(a) >= 0)  # rows ordered by cell
    # not the balanced rule: under it every cell gets budget // cells or one more
    assert counts.max() - counts.min() > 1, f"random sampling gave balanced counts {np.unique(counts)}"
    # multinomial dispersion: Pearson's statistic ~ chi2(cells - 1) under the null (expected 10 per cell)
    chi2 = ((counts - budget / cells) ** 2 / (budget / cells)).sum()
    cdf = sps.chi2.cdf(chi2, cells - 1)
    assert 0.005 < cdf < 0.995, f"per-cell counts not like a uniform multinomial draw: chi2 = {chi2:.1f}, cdf {cdf:.4f}"
    # the spec seed drives the draw; the budget is still met
    spec_dict["seed"] = 1
    _, other = _cell_counts_of(spec_dict)
    assert other.sum() == budget and not np.array_equal(other, counts)
    spec_dict["sampling"] = "balanced"  # the balanced rule under the same seed is even
    _, balanced = _cell_counts_of(spec_dict)
    assert balanced.sum() == budget and balanced.max() - balanced.min() <= 1
