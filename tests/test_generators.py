"""The diffusers generator: tiny SD pipeline saved with save_pretrained and loaded back by folder,
one generator per row (an image depends on its row's seed, not its batch), textual-inversion tokens."""

import numpy as np
import pytest
import torch

from vbugs_ray.roles import registry
from vbugs_ray.errors import SpecError
from vbugs_ray.roles.registry import validate_backends
from vbugs_ray.spec import parse_spec


def _generator(tiny_spec_dict, **options):
    tiny_spec_dict["generator"]["options"].update(options)
    spec = parse_spec(tiny_spec_dict)
    registry.prepare("generator", spec.generator, spec, progress=lambda _: None)
    return registry.create("generator", spec.generator, spec)


def test_images_depend_on_the_row_seed_not_the_batch(tiny_spec_dict):
    gen = _generator(tiny_spec_dict, scheduler="EulerAncestralDiscreteScheduler")  # a sampler that draws noise each step
    prompts = ["a photo of a cat on grass", "a photo of a dog in the snow", "a photo of a cat at night"]
    seeds = np.array([11, 22, 33])
    together = gen.generate(prompts, seeds)
    assert together.shape == (3, 64, 64, 3) and together.dtype == np.uint8
    alone = gen.generate(prompts[1:2], seeds[1:2])
    reordered = gen.generate(prompts[::-1], seeds[::-1])
    # float rounding in batched kernels may move a pixel by one level, never more
    assert np.abs(alone[0].astype(int) - together[1]).max() <= 1
    assert np.abs(reordered[::-1].astype(int) - together).max() <= 1
    other_seed = gen.generate(prompts[1:2], np.array([23]))
    assert np.abs(other_seed[0].astype(int) - together[1]).mean() > 5  # the seed matters


def test_textual_inversion_tokens_change_the_prompt_embedding(tiny_spec_dict, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file({"<cat-17>": torch.randn(32)}, str(tmp_path / "cat17.safetensors"))
    torch.save({"<dog-3>": torch.randn(32)}, tmp_path / "dog3.bin")
    gen = _generator(tiny_spec_dict, tokens={"<cat-17>": str(tmp_path / "cat17.safetensors"),
                                             "<dog-3>": str(tmp_path / "dog3.bin")})
    tokenizer, encoder = gen.pipe.tokenizer, gen.pipe.text_encoder
    for token in ("<cat-17>", "<dog-3>"):
        ids = tokenizer(f"a photo of a {token}").input_ids
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert token_id in ids  # one learned token, not a spelling of characters
    row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("<cat-17>")]
    from safetensors.torch import load_file

    torch.testing.assert_close(row.detach(), load_file(str(tmp_path / "cat17.safetensors"))["<cat-17>"])
    images = gen.generate(["a photo of a <cat-17> in the snow"], np.array([5]))
    assert images.shape == (1, 64, 64, 3)


def test_bad_generator_options_name_the_field(tiny_spec_dict, tmp_path):
    bad_token = tmp_path / "bad.safetensors"
    bad_token.write_bytes(b"not a safetensors file")
    cases = [
        ({"scheduler": "WarpDriveScheduler"}, "generator.options.scheduler"),
        ({"height": 50}, "generator.options.height"),
        ({"model": str(tmp_path)}, "generator.options.model"),
        ({"tokens": ["<a>"]}, "generator.options.tokens"),
    ]
    for options, field in cases:
        spec_dict = {**tiny_spec_dict, "generator": {**tiny_spec_dict["generator"],
                                                     "options": {**tiny_spec_dict["generator"]["options"], **options}}}
        with pytest.raises(SpecError) as err:
            validate_backends(parse_spec(spec_dict))
        assert err.value.field == field, options
    with pytest.raises(SpecError, match="cannot read textual-inversion file") as err:
        _generator(tiny_spec_dict, tokens={"<a>": str(bad_token)})
    assert err.value.field == "generator.options.tokens.<a>"


def test_memory_flags_and_scheduler_choice_still_generate(tiny_spec_dict):
    gen = _generator(tiny_spec_dict, attention_slicing=True, vae_tiling=True, scheduler="EulerDiscreteScheduler",
                     negative_prompt="blurry", height=48, width=48)
    assert type(gen.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert gen.pipe.vae.use_tiling
    images = gen.generate(["a photo of a cat on grass", "a photo of a dog at night"], np.array([1, 2]))
    assert images.shape == (2, 48, 48, 3)


def test_channels_last_and_the_uint8_output_match_the_pipeline(tiny_spec_dict):
    """The generator turns the decoded batch into uint8 on the device; the pixels are the
    pipeline's own numpy output, scaled and rounded; channels-last changes the layout, not them."""
    gen = _generator(tiny_spec_dict)
    prompts, seeds = ["a photo of a cat on grass", "a photo of a dog at night"], np.array([5, 6])
    images = gen.generate(prompts, seeds)
    reference = gen.pipe(prompt=prompts, generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
                         output_type="np", **gen.call_kwargs).images
    np.testing.assert_array_equal(images, (np.clip(reference, 0, 1) * 255).round().astype(np.uint8))
    fast = _generator(tiny_spec_dict, channels_last=True)
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(fast.generate(prompts, seeds).astype(int) - images).max() <= 1
