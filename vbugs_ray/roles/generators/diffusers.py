"""Generator backend ``diffusers``: any text-to-image pipeline ``DiffusionPipeline.from_pretrained``
loads (SD 1.x/2.x, SDXL, SD-Turbo / SDXL-Turbo...), a hub id or a local folder.

A batch of prompts is one pipeline call, with one CPU ``torch.Generator`` per row seeded by the
row's seed: each row's starting noise (and any ancestral-sampler noise) comes from its own
generator, so an image depends on (spec, row seed) and not on which rows share its batch or on the
device. Options (all but ``model`` optional):

model, revision, variant ('fp16' weights files), scheduler (a diffusers scheduler class name,
built from the pipeline's scheduler config), steps (25), guidance_scale (7.5), height, width,
negative_prompt, compile (torch.compile the denoiser), attention_slicing, vae_tiling, and tokens:
learned class tokens, ``{"<class_17>": path}`` to textual-inversion files (.safetensors, or .bin
read with ``weights_only=True``; SDXL files with clip_l / clip_g embeddings load into both encoders).
The role's ``dtype`` is the pipeline's ``torch_dtype``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, option
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.weights import check_pretrained_source, read_tensors

FIELD = "generator.options"


def check_scheduler(name) -> None:
    import diffusers

    cls = getattr(diffusers, str(name), None) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))[:12]
        raise SpecError(f"{FIELD}.scheduler", f"unknown diffusers scheduler {quote(name)}; e.g. {', '.join(known)}")


def load_token_file(path: str, field: str) -> dict[str, torch.Tensor]:
    """A textual-inversion file as a dict of tensors (never unpickling code)."""
    state = read_tensors(path, field, "textual-inversion file", hint="; make one with `vbugs learn-tokens`")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(field, f"{path} is not a textual-inversion file (expected token -> embedding tensors)")
    return state


def _tokens(value, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise SpecError(field, "expected a mapping token -> textual-inversion file, e.g. {'<class_17>': tokens/17.safetensors}")
    return dict(value)


def load_tokens(pipe, tokens: dict[str, str]) -> None:
    """Add learned tokens to the pipeline's tokenizer(s) and text encoder(s)."""
    for token, path in tokens.items():
        field = f"{FIELD}.tokens.{token}"
        state = load_token_file(path, field)
        if "clip_l" in state:  # SDXL: one embedding per text encoder
            pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
            continue
        embedding = next(iter(state.values())) if len(state) == 1 else state.get(token)
        if embedding is None:
            raise SpecError(field, f"{path} holds several embeddings ({', '.join(state)}); name one file per token")
        pipe.load_textual_inversion({token: embedding}, token=token)


class DiffusersGenerator:
    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="a hub id (stabilityai/sd-turbo) or a save_pretrained folder")
        revision: str | None = option(None, kind=str)
        variant: str | None = option(None, kind=str)
        scheduler: str | None = option(None, kind=str)
        steps: int = option(25, kind=int, low=1)
        guidance_scale: float = option(7.5, kind=float, low=0, doc="0 or 1: no guidance")
        height: int | None = option(None, kind=int, low=8, multiple=8)
        width: int | None = option(None, kind=int, low=8, multiple=8)
        negative_prompt: str | None = option(None, kind=str)
        compile: bool = option(False, kind=bool)
        channels_last: bool = option(False, kind=bool, doc="UNet and VAE in channels-last memory format")
        attention_slicing: bool = option(False, kind=bool)
        vae_tiling: bool = option(False, kind=bool)
        tokens: dict = option({}, parse=_tokens)

    @classmethod
    def check(cls, options, spec) -> None:
        check_pretrained_source(options.model, f"{FIELD}.model", "stabilityai/sd-turbo", "model_index.json",
                                "diffusers pipeline")
        if options.scheduler is not None:
            check_scheduler(options.scheduler)

    @classmethod
    def prepare(cls, options, spec, progress=print) -> None:
        """Unreadable token files fail here, before any actor starts."""
        for token, path in options.tokens.items():
            load_token_file(path, f"{FIELD}.tokens.{token}")

    def __init__(self, options, role_spec, spec):
        import diffusers

        self.device = resolve_device("generator", role_spec)
        self.dtype = resolve_dtype("generator", role_spec, self.device)
        kwargs = {k: getattr(options, k) for k in ("revision", "variant") if getattr(options, k)}
        try:
            with warnings.catch_warnings():  # newer diffusers renames torch_dtype to dtype; both load
                warnings.simplefilter("ignore", FutureWarning)
                pipe = diffusers.DiffusionPipeline.from_pretrained(options.model, torch_dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise SpecError(f"{FIELD}.model", f"diffusers could not load {quote(options.model)}: "
                            f"{str(exc).strip().splitlines()[0][:200]}") from None
        if options.scheduler:
            pipe.scheduler = getattr(diffusers, options.scheduler).from_config(pipe.scheduler.config)
        if options.tokens:
            load_tokens(pipe, options.tokens)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if options.attention_slicing:
            pipe.enable_attention_slicing()
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        if options.channels_last:  # faster convolutions on tensor cores
            for name in ("unet", "vae"):
                if getattr(pipe, name, None) is not None:
                    getattr(pipe, name).to(memory_format=torch.channels_last)
        if options.compile:
            for name in ("unet", "transformer"):
                if getattr(pipe, name, None) is not None:
                    setattr(pipe, name, torch.compile(getattr(pipe, name)))
        self.pipe = pipe
        self.call_kwargs = {"num_inference_steps": options.steps, "guidance_scale": float(options.guidance_scale)}
        self.call_kwargs.update({k: getattr(options, k) for k in ("height", "width") if getattr(options, k)})
        self.negative_prompt = options.negative_prompt

    def generate(self, prompts: list[str], seeds: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8, one pipeline call for the whole batch. The decoded batch becomes
        uint8 on the device: a quarter of float32's bytes cross to the host."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        negative = [self.negative_prompt] * len(prompts) if self.negative_prompt else None
        with torch.inference_mode():
            out = self.pipe(prompt=list(prompts), negative_prompt=negative, generator=generators,
                            output_type="pt", **self.call_kwargs)
            images = (out.images.float().clamp(0.0, 1.0) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()
