"""`vbugs learn-tokens`: textual inversion on the tiny SD pipeline for a few steps."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vbugs_ray.learn_tokens import TokenSettings, learn_token
from vbugs_ray.roles import registry
from vbugs_ray.spec import parse_spec


def _image_folder(path, n=3):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(path / f"img{i}.png")
    return path


def test_learned_token_trains_only_its_row_and_loads_into_the_generator(tiny_models, tiny_spec_dict, tmp_path):
    images = _image_folder(tmp_path / "tench")
    out = learn_token(tiny_models["sd"], images, "<tench>", "fish", tmp_path / "tench.safetensors",
                      TokenSettings(steps=4, lr=5e-2), progress=lambda _: None)
    learned = load_file(str(out))
    assert list(learned) == ["<tench>"] and learned["<tench>"].shape == (32,)

    tiny_spec_dict["generator"]["options"]["tokens"] = {"<tench>": str(out)}
    spec = parse_spec(tiny_spec_dict)
    gen = registry.create("generator", spec.generator, spec)
    tok, enc = gen.pipe.tokenizer, gen.pipe.text_encoder
    init = enc.get_input_embeddings().weight[tok("fish", add_special_tokens=False).input_ids].mean(dim=0)
    row = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("<tench>")]
    torch.testing.assert_close(row.detach(), learned["<tench>"])
    assert (row - init).abs().max() > 1e-3  # training moved it away from the init word
    # the pipeline's own embeddings are the saved model's: the training froze them
    from transformers import CLIPTextModel

    saved = CLIPTextModel.from_pretrained(tiny_models["sd"], subfolder="text_encoder").get_input_embeddings().weight
    torch.testing.assert_close(enc.get_input_embeddings().weight[: len(saved)], saved)
    image = gen.generate(["a photo of a <tench> in the snow"], np.array([3]))
    assert image.shape == (1, 64, 64, 3)


@pytest.mark.cli
def test_learn_tokens_cli_errors_are_one_line(tiny_models, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [sys.executable, "-m", "vbugs_ray.cli", "learn-tokens", "--model", tiny_models["sd"], "--init-word", "fish",
            "--out", str(tmp_path / "t.safetensors"), "--steps", "2"]
    for extra, message in ((["--images", str(empty), "--token", "<t>"], "holds no images"),
                           (["--images", str(tmp_path / "nowhere"), "--token", "<t>"], "no folder at"),
                           (["--images", str(_image_folder(tmp_path / "ok")), "--token", "tench"], "--token")):
        run = subprocess.run(base + extra, capture_output=True, text=True)
        assert run.returncode == 2, run.stderr[-1500:]
        assert run.stderr.strip().count("\n") == 0 and message in run.stderr
    assert not (tmp_path / "t.safetensors").exists()
