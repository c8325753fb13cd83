import numpy as np
import pytest

from vbugs_ray.toyworld import renderer


def test_same_seed_same_image_whatever_the_batch():
    props = renderer.sample_properties(40, np.random.default_rng(0))
    seeds = list(range(100, 140))
    whole = renderer.render(props, seeds)
    alone = renderer.render(props[17:18], seeds[17:18])
    np.testing.assert_array_equal(whole[17], alone[0])
    np.testing.assert_array_equal(whole, renderer.render(props, seeds))
    assert whole.dtype == np.uint8 and whole.shape == (40, 64, 64, 3)
    assert not np.array_equal(whole[0], renderer.render(props[:1], [999])[0])


def test_large_batches_render_chunked_identically():
    props = renderer.sample_properties(300, np.random.default_rng(1))
    seeds = list(range(300))
    big = renderer.render(props, seeds)
    np.testing.assert_array_equal(big[250:], renderer.render(props[250:], seeds[250:]))


@pytest.mark.parametrize("resolution", [32, 64, 96])
def test_resolution(resolution):
    assert renderer.render([{"class": "star"}], [0], resolution).shape == (1, resolution, resolution, 3)


def test_prompt_properties_are_read():
    assert renderer.parse_prompt("a red star on snow at night, heavy clutter") == {
        "colour": "red", "class": "star", "background": "snow", "lighting": "night", "clutter": "heavy"}
    assert renderer.parse_prompt("A LARGE Blue Ring in fog") == {
        "size": "large", "colour": "blue", "class": "ring", "lighting": "fog"}
    props = renderer.sample_properties(200, np.random.default_rng(2))
    assert all(renderer.parse_prompt(renderer.describe(p)) == p for p in props)


def test_prompt_controls_the_image_and_unnamed_properties_vary():
    night = renderer.render_prompts(["a star at night"] * 20, list(range(20)))
    day = renderer.render_prompts(["a star in daylight"] * 20, list(range(20)))
    assert night.mean() < 0.5 * day.mean()  # night is dark
    # background is not named: different seeds give different backgrounds
    full = [renderer.complete_properties(renderer.parse_prompt("a star at night"), s) for s in range(20)]
    assert len({p["background"] for p in full}) > 1
    assert all(p["class"] == "star" and p["lighting"] == "night" for p in full)


def test_unknown_property_value_is_refused():
    with pytest.raises(ValueError, match="no colour='mauve'"):
        renderer.render([{"colour": "mauve"}], [0])
