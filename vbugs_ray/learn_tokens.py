"""`vbugs learn-tokens`: textual inversion of one class token from a folder of its real images
(Dataset Interfaces learns one token per ImageNet class this way, so the generator draws the
dataset's class rather than what its name means elsewhere).

Only the new token's embedding row trains; the UNet, the VAE and every other embedding stay
frozen. Defaults are the paper's: 3000 steps, lr 5e-4 constant, AdamW with weight decay 1e-2,
batch 1, fp16 on a GPU. The result is a diffusers-format safetensors file ``{token: embedding}``
that ``generator.options.tokens`` loads. SD 1.x / 2.x pipelines (one text encoder).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vbugs_ray.atomic import atomic_write
from vbugs_ray.errors import TokenError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
             "a photo of a clean {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}")


@dataclass(frozen=True)
class TokenSettings:
    steps: int = 3000
    lr: float = 5e-4
    weight_decay: float = 1e-2
    batch_size: int = 1
    resolution: int | None = None  # default: the pipeline's native image size
    mixed_precision: str | None = None  # default: fp16 on a GPU, none on a CPU
    seed: int = 0


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TokenError(f"--images: no folder at {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TokenError(f"--images: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_images(files: list[Path], resolution: int) -> torch.Tensor:
    """The images: shorter side resized to ``resolution``, centre-cropped, in [-1, 1]."""
    from PIL import Image

    out = []
    for file in files:
        try:
            image = Image.open(file).convert("RGB")
        except OSError as exc:
            raise TokenError(f"--images: cannot read {file} ({exc})") from None
        scale = resolution / min(image.size)
        image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
                             Image.BICUBIC)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        array = np.asarray(image.crop((left, top, left + resolution, top + resolution)), np.float32)
        out.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)


def learn_token(model: str, images: str | Path, token: str, init_word: str, out: str | Path,
                settings: TokenSettings = TokenSettings(), progress: Callable[[str], None] = print) -> Path:
    import diffusers
    from accelerate import Accelerator
    from safetensors.torch import save_file

    if not (token.startswith("<") and token.endswith(">")) or " " in token:
        raise TokenError(f"--token: expected a single word in angle brackets such as <tench>; got {token!r}")
    files = image_files(images)  # cheap checks first, before loading the pipeline
    diffusers.utils.logging.disable_progress_bar()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise TokenError(f"--model: diffusers could not load {model!r}: {str(exc).strip().splitlines()[0][:200]}") from None
    if getattr(pipe, "text_encoder_2", None) is not None or not hasattr(pipe, "unet"):
        raise TokenError(f"--model: {type(pipe).__name__} is not supported; learn-tokens trains SD 1.x / 2.x pipelines")
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = settings.resolution or unet.config.sample_size * pipe.vae_scale_factor
    pixels = load_images(files, resolution)

    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise TokenError(f"--init-word: {init_word!r} has no tokens")
    if tokenizer.add_tokens(token) != 1:
        raise TokenError(f"--token: {token} is already a word of this tokenizer; pick a new one")
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer))
    embeddings = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        embeddings[token_id] = embeddings[init_ids].mean(dim=0)  # start from the init word's meaning
    frozen = embeddings.detach().clone()

    precision = settings.mixed_precision or ("fp16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(mixed_precision=precision)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([text_encoder.get_input_embeddings().weight], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    text_encoder, optimizer = accelerator.prepare(text_encoder, optimizer)
    vae.to(accelerator.device, weight_dtype)
    unet.to(accelerator.device, weight_dtype)
    text_encoder.train()

    rng, generator = random.Random(settings.seed), torch.Generator().manual_seed(settings.seed)
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[token_id] = False
    t0 = time.time()
    for step in range(1, settings.steps + 1):
        picks = [rng.randrange(len(pixels)) for _ in range(settings.batch_size)]
        batch = pixels[picks]
        batch = torch.where(torch.rand(len(picks), 1, 1, 1, generator=generator) < 0.5, batch.flip(-1), batch)
        with torch.no_grad():
            latents = vae.encode(batch.to(accelerator.device, weight_dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(picks),),
                                  generator=generator).to(accelerator.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prompts = [rng.choice(TEMPLATES).format(token) for _ in picks]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(accelerator.device)
        hidden = text_encoder(ids)[0].to(weight_dtype)
        predicted = unet(noisy, timesteps, hidden).sample
        target = (noise_scheduler.get_velocity(latents, noise, timesteps)
                  if noise_scheduler.config.prediction_type == "v_prediction" else noise)
        loss = torch.nn.functional.mse_loss(predicted.float(), target.float())
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # only the new token learns: put every other row back
            weight = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight
            weight[keep.to(weight.device)] = frozen[keep].to(weight)
        if step == 1 or step % 100 == 0 or step == settings.steps:
            progress(f"learn-tokens {token}: step {step}/{settings.steps}, loss {loss.item():.4f}, {time.time() - t0:.0f}s")

    learned = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight[token_id]
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {token: learned.detach().float().cpu().contiguous()}
    return atomic_write(out, lambda tmp: save_file(tensors, str(tmp)))
