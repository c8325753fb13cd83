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

import numpy as np
import torch

from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.roles.weights import check_pretrained_source, read_tensors
from vbugs_ray.spec import SpecError

FIELD = "generator.options"
OPTIONS = ("model", "revision", "variant", "scheduler", "steps", "guidance_scale", "height", "width",
           "negative_prompt", "compile", "attention_slicing", "vae_tiling", "tokens")


def _check_int(opts: dict, key: str, low: int, multiple: int = 1) -> None:
    value = opts.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value % multiple:
        extra = f" and a multiple of {multiple}" if multiple > 1 else ""
        raise SpecError(f"{FIELD}.{key}", f"expected an integer >= {low}{extra}; got {value!r}")


def check_scheduler(name) -> None:
    import diffusers

    cls = getattr(diffusers, str(name), None) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("_"))[:12]
        raise SpecError(f"{FIELD}.scheduler", f"unknown diffusers scheduler {name!r}; e.g. {', '.join(known)}")


def load_token_file(path: str, field: str) -> dict[str, torch.Tensor]:
    """A textual-inversion file as a dict of tensors (never unpickling code)."""
    state = read_tensors(path, field, "textual-inversion file", hint="; make one with `vbugs learn-tokens`")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpecError(field, f"{path} is not a textual-inversion file (expected token -> embedding tensors)")
    return state


def check_tokens(tokens) -> None:
    if tokens is None:
        return
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
        raise SpecError(f"{FIELD}.tokens", "expected a mapping token -> textual-inversion file, e.g. {'<class_17>': tokens/17.safetensors}")


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
    OPTIONS = OPTIONS

    @classmethod
    def validate(cls, role_spec, spec) -> None:
        opts = role_spec.options
        check_pretrained_source(opts.get("model"), f"{FIELD}.model", "stabilityai/sd-turbo", "model_index.json",
                                "diffusers pipeline")
        if "scheduler" in opts:
            check_scheduler(opts["scheduler"])
        _check_int(opts, "steps", 1)
        for key in ("height", "width"):
            _check_int(opts, key, 8, multiple=8)
        guidance = opts.get("guidance_scale", 7.5)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0:
            raise SpecError(f"{FIELD}.guidance_scale", f"expected a number >= 0 (0 or 1: no guidance); got {guidance!r}")
        for key in ("compile", "attention_slicing", "vae_tiling"):
            if not isinstance(opts.get(key, False), bool):
                raise SpecError(f"{FIELD}.{key}", "expected true or false")
        for key in ("revision", "variant", "negative_prompt"):
            if opts.get(key) is not None and not isinstance(opts[key], str):
                raise SpecError(f"{FIELD}.{key}", f"expected a string; got {opts[key]!r}")
        check_tokens(opts.get("tokens"))

    @classmethod
    def prepare(cls, role_spec, spec, progress=print) -> None:
        """Unreadable token files fail here, before any actor starts."""
        for token, path in (role_spec.options.get("tokens") or {}).items():
            load_token_file(path, f"{FIELD}.tokens.{token}")

    def __init__(self, role_spec, spec):
        import diffusers

        opts = role_spec.options
        self.device = resolve_device("generator", role_spec)
        self.dtype = resolve_dtype("generator", role_spec, self.device)
        kwargs = {k: opts[k] for k in ("revision", "variant") if opts.get(k)}
        try:
            with warnings.catch_warnings():  # newer diffusers renames torch_dtype to dtype; both load
                warnings.simplefilter("ignore", FutureWarning)
                pipe = diffusers.DiffusionPipeline.from_pretrained(opts["model"], torch_dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as exc:
            raise SpecError(f"{FIELD}.model", f"diffusers could not load {opts['model']!r}: "
                            f"{str(exc).strip().splitlines()[0][:200]}") from None
        if opts.get("scheduler"):
            pipe.scheduler = getattr(diffusers, opts["scheduler"]).from_config(pipe.scheduler.config)
        if opts.get("tokens"):
            load_tokens(pipe, opts["tokens"])
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if opts.get("attention_slicing"):
            pipe.enable_attention_slicing()
        if opts.get("vae_tiling"):
            pipe.vae.enable_tiling()
        if opts.get("compile"):
            for name in ("unet", "transformer"):
                if getattr(pipe, name, None) is not None:
                    setattr(pipe, name, torch.compile(getattr(pipe, name)))
        self.pipe = pipe
        self.call_kwargs = {"num_inference_steps": opts.get("steps", 25),
                            "guidance_scale": float(opts.get("guidance_scale", 7.5))}
        self.call_kwargs.update({k: opts[k] for k in ("height", "width") if opts.get(k)})
        self.negative_prompt = opts.get("negative_prompt")

    def generate(self, prompts: list[str], seeds: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8, one pipeline call for the whole batch."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        negative = [self.negative_prompt] * len(prompts) if self.negative_prompt else None
        with torch.inference_mode():
            out = self.pipe(prompt=list(prompts), negative_prompt=negative, generator=generators,
                            output_type="np", **self.call_kwargs)
        return (np.clip(out.images, 0.0, 1.0) * 255).round().astype(np.uint8)
