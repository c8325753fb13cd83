"""Generator throughput: vbugs_ray's generator stage vs. the same diffusers pipeline called
directly, one prompt per call (as the Dataset Interfaces code generates) and batched. JSON out.

All three run the same prompts, with the same steps, resolution and seeds, in one process:
- ``stage``: GenerateStage over batches (what a Ray Data actor runs: one pipeline call per batch,
  one torch.Generator per row);
- ``direct_batch1``: ``pipe(prompt, generator=...)`` per prompt;
- ``direct_batched``: ``pipe(prompts, generator=[...])`` per batch, no vbugs code.

--model tiny (default) builds the toy-size SD pipeline (CPU-friendly); sd-turbo and sd21 build
the full-size SD-Turbo (512 px) / SD-2.1 (768 px) architectures at random init: the same compute
as the released models, no download. Example on a GPU:
    python benchmarks/bench_generate.py --model sd-turbo --images 256 --batch-size 16 --dtype float16
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import types

import numpy as np
import torch

from vbugs_ray import tiny
from vbugs_ray.pipeline import GenerateStage
from vbugs_ray.spec import RoleSpec

PROFILES = {  # model -> (height/width, default steps, guidance, prediction type)
    "tiny": (64, 4, 7.5, "epsilon"),
    "sd-turbo": (512, 1, 0.0, "epsilon"),
    "sd21": (768, 25, 7.5, "v_prediction"),
}
SUBJECTS = ["tench", "goldfish", "red fox", "school bus", "pizza", "teddy bear", "airliner", "banana"]
SHIFTS = ["in the grass", "in the snow", "at night", "in the fog", "in an oil painting", "and a flower"]


def full_size_pipeline(model: str):
    """SD 2.x UNet / VAE / OpenCLIP-H text encoder at their released sizes, random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    size, _, _, prediction = PROFILES[model]
    tokenizer = tiny.tiny_clip_tokenizer()  # byte-level ids: same sequence length, no vocab download
    unet = UNet2DConditionModel(
        sample_size=size // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=size)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
        hidden_act="gelu", projection_dim=512, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type=prediction, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PROFILES), default="tiny")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    size, default_steps, guidance, _ = PROFILES[args.model]
    steps = args.steps or default_steps

    with tempfile.TemporaryDirectory() as folder:
        pipe = tiny.tiny_sd_pipeline() if args.model == "tiny" else full_size_pipeline(args.model)
        pipe.save_pretrained(folder)  # the stage loads it the way it loads a hub model: from_pretrained
        del pipe
        role = RoleSpec(backend="diffusers", batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                        options={"model": folder, "steps": steps, "guidance_scale": guidance, "height": size, "width": size})
        stage = GenerateStage(types.SimpleNamespace(generator=role))  # the stage reads only the generator role
        backend = stage.backend
        device, pipe = backend.device, backend.pipe
        prompts = [f"a photo of a {SUBJECTS[i % len(SUBJECTS)]} {SHIFTS[(i // len(SUBJECTS)) % len(SHIFTS)]}"
                   for i in range(args.images)]
        seeds = np.arange(args.images, dtype=np.int64) + 1000
        b = args.batch_size
        call = {"num_inference_steps": steps, "guidance_scale": guidance, "height": size, "width": size, "output_type": "np"}

        def run_stage():
            for i in range(0, args.images, b):
                stage({"prompt": np.asarray(prompts[i:i + b], dtype=object), "seed": seeds[i:i + b]})

        def run_batch1():
            with torch.inference_mode():
                for p, s in zip(prompts, seeds):
                    pipe(prompt=p, generator=torch.Generator("cpu").manual_seed(int(s)), **call)

        def run_batched():
            with torch.inference_mode():
                for i in range(0, args.images, b):
                    pipe(prompt=prompts[i:i + b], generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i:i + b]],
                         **call)

        backend.generate(prompts[:b], seeds[:b])  # warm-up: kernels, allocator, compile
        timings = {name: _timed(fn, device) for name, fn in
                   (("stage", run_stage), ("direct_batch1", run_batch1), ("direct_batched", run_batched))}
    rate = {name: args.images / t for name, t in timings.items()}
    print(json.dumps({
        "benchmark": "generate",
        "model": args.model, "architecture": "random-init " + ("toy-size SD" if args.model == "tiny" else args.model),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype, "images": args.images, "batch_size": b, "steps": steps, "resolution": size,
        "guidance_scale": guidance,
        "images_per_s": {k: round(v, 3) for k, v in rate.items()},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "ratio_stage_vs_batch1": round(rate["stage"] / rate["direct_batch1"], 2),
        "ratio_batched_vs_batch1": round(rate["direct_batched"] / rate["direct_batch1"], 2),
        "ratio_stage_vs_batched": round(rate["stage"] / rate["direct_batched"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
