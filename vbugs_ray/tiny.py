"""Tiny random-weight models of every real backend, built from small configs in memory.

Tests, benchmarks and dry runs use them to exercise the real loading code (``save_pretrained``
then ``from_pretrained``, a state dict then ``timm.create_model(..., checkpoint)``...) without a
download. Each ``save_*`` writes a folder or file that the matching spec option accepts.
"""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_convnet(num_classes: int = 10, width: int = 8) -> torch.nn.Module:
    """A two-layer CNN: the ``module`` classifier backend's smallest possible user model."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, num_classes),
    )


def save_timm_classifier(path: str | Path, name: str = "test_resnet", num_classes: int = 1000, seed: int = 0) -> Path:
    """A timm model's random weights as a checkpoint file (``classifier.options.checkpoint``)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_open_clip(folder: str | Path, name: str = "vbugs-tiny-clip", seed: int = 0) -> tuple[Path, Path]:
    """A tiny ViT CLIP: its config JSON (``embedder.options.config``; the model name is the file's
    stem) and random weights (``embedder.options.pretrained``)."""
    import json

    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    weights = folder / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return config, weights


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet with no merges: every string tokenizes, one token per character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    order = [chr(b) for b in printable] + [c for b, c in enumerate(chars) if b not in printable]
    tokens = order + [c + "</w>" for c in order] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=max_length)


def tiny_sd_pipeline(seed: int = 0):
    """A Stable Diffusion pipeline of the real classes at toy size: UNet (32, 64), VAE (32, 64)
    (64 px images from 32 px latents), a 5-layer CLIP text encoder of width 32, DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """``save_pretrained`` folder of the tiny pipeline: ``generator.options.model`` accepts it."""
    folder = Path(folder)
    tiny_sd_pipeline(seed).save_pretrained(folder)
    return folder


TINY_CAPTION_WORDS = ("a", "photo", "of", "the", "cat", "dog", "on", "in", "grass", "snow", "at", "night", "day",
                      "dark", "white", "green", "field", "painting", "with", "flower")


def tiny_blip(seed: int = 0):
    """A BLIP captioner (model and processor) of the real classes at toy size, with a word-level
    vocabulary written here (no download)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {tok: i for i, tok in enumerate([*specials, *TINY_CAPTION_WORDS])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=32)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "encoder_hidden_size": 32, "max_position_embeddings": 32,
                     "pad_token_id": vocab["[PAD]"], "bos_token_id": vocab["[DEC]"], "sep_token_id": vocab["[SEP]"],
                     "eos_token_id": vocab["[SEP]"]},
        projection_dim=32)
    return BlipForConditionalGeneration(config).eval(), processor


def save_tiny_blip(folder: str | Path, seed: int = 0) -> Path:
    """``save_pretrained`` folder (model + processor): ``captioner.options.model`` accepts it."""
    folder = Path(folder)
    model, processor = tiny_blip(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class ImageBlind(torch.nn.Module):
    """A classifier whose outputs ignore the image: random logits from its own generator. Audits
    of it are the shuffled-label control (no description can raise its error rate)."""

    def __init__(self, num_classes: int = 10, seed: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("unused", torch.zeros(1))  # a module with a device to follow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.randn(x.shape[0], self.num_classes, generator=self.generator)
