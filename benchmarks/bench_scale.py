"""Toy-world audit throughput on a simulated multi-node cluster (``ray.cluster_utils.Cluster`` on
this machine): a head that runs no actor and 1, 2, 3 worker nodes with the same logical
resources each (CPUs, one logical GPU), the generator and the scoring actors one per node. Each
size runs the `vbugs audit` command as a whole process joined to the cluster by RAY_ADDRESS; the
result is JSON with wall time, images/s of the generation step (RUN_DIR/timing.json) and the
ratios to one node. On one machine the nodes share its cores, so this measures the overhead of
spreading (scheduling, object transfer between nodes), not a speed-up; see SCALING.md.

    python benchmarks/bench_scale.py [--images 7200] [--nodes 1,2,3] [--cpus-per-node 2] [--stage-costs]

``--stage-costs`` also records what one 512-px image costs each stage (``stage_costs``): the
figures SCALING.md's cost model starts from. ``--nodes none`` skips the cluster runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _spec(images: int, nodes: int, shard_rows: int) -> dict:
    spec = yaml.safe_load((ROOT / "vbugs_ray" / "specs" / "toyworld.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec.update(budget=images, verify=False, captioner=None)
    spec["generator"].update(concurrency=nodes, num_gpus=1, num_cpus=0.5)  # one per node: each has one GPU
    for role in ("embedder", "classifier"):
        spec[role].update(concurrency=nodes, num_cpus=0.25)
    spec["run"] = {"executor": "ray", "shard_rows": shard_rows}
    return spec


def run_size(nodes: int, images: int, cpus_per_node: float, shard_rows: int, folder: Path) -> dict:
    from ray.cluster_utils import Cluster

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            head.add_node(num_cpus=cpus_per_node, num_gpus=1)
        head.wait_for_nodes()
        spec_path = folder / f"spec-{nodes}.yaml"
        spec_path.write_text(yaml.safe_dump(_spec(images, nodes, shard_rows)))
        run_dir = folder / f"run-{nodes}"
        env = dict(os.environ, RAY_ADDRESS=head.address, VBUGS_RAY_CONNECT_TIMEOUT_S="60")
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", str(spec_path), "--out", str(run_dir)],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"the audit on {nodes} node(s) failed: {done.stderr[-2000:]}")
        timing = json.loads((run_dir / "timing.json").read_text())
        placed = json.loads((run_dir / "nodes.json").read_text())
        return {"worker_nodes": nodes, "images": images, "wall_s": round(wall, 2),
                "generation_s": timing["generation"], "search_s": timing["search"],
                "images_per_s": round(images / timing["generation"], 1),
                "nodes_used": {role: len(ids) for role, ids in placed.items()}}
    finally:
        head.shutdown()


def _flops(fn) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def stage_costs() -> dict:
    """What one 512-px image costs each stage, counted or timed here: SD-Turbo's FLOPs (the text
    encoder, one UNet step, the VAE decoder at their released sizes, random weights), the scoring
    models' FLOPs at 224 px (timm ViT-B/16, open_clip ViT-B-32's image tower, random weights),
    and the run store's PNG encoding of one 512-px image on one CPU thread."""
    import numpy as np
    import open_clip
    import timm
    import torch

    from vbugs_ray.store import encode_png

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import full_size_pipeline

    torch.set_num_threads(1)
    pipe = full_size_pipeline("sd-turbo")
    ids = pipe.tokenizer(["a photo of a red fox in the snow"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    text = _flops(lambda: pipe.text_encoder(ids))
    cond = pipe.text_encoder(ids)[0]
    latents = torch.randn(1, 4, 64, 64)
    unet = _flops(lambda: pipe.unet(latents, torch.tensor([999]), encoder_hidden_states=cond))
    vae = _flops(lambda: pipe.vae.decode(latents))
    vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    classifier = _flops(lambda: vit(torch.randn(1, 3, 224, 224)))
    clip, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    embedder = _flops(lambda: clip.encode_image(torch.randn(1, 3, 224, 224)))
    rng = np.random.default_rng(0)  # a smooth picture with some texture, as generated images are
    ramp = np.linspace(0, 255, 512)
    image = np.clip(np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1) + rng.normal(0, 8, (512, 512, 3)), 0, 255)
    image = image.astype(np.uint8)
    t0, n = time.perf_counter(), 20
    sizes = [len(encode_png(image)) for _ in range(n)]
    png_s = (time.perf_counter() - t0) / n
    return {"sd_turbo_flops_per_image": {"text_encoder": text, "unet_one_step": unet, "vae_decode": vae,
                                         "total": text + unet + vae},
            "scoring_flops_per_image": {"timm_vit_base_patch16_224": classifier, "open_clip_vit_b_32_image": embedder},
            "png_512px": {"seconds_one_thread": round(png_s, 4), "bytes": sizes[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=7200)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--cpus-per-node", type=float, default=2.0)
    parser.add_argument("--shard-rows", type=int, default=1200)
    parser.add_argument("--stage-costs", action="store_true", help="also count FLOPs and time PNG encoding per image")
    args = parser.parse_args()
    sizes = [] if args.nodes == "none" else [int(n) for n in args.nodes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        results = [run_size(n, args.images, args.cpus_per_node, args.shard_rows, Path(folder)) for n in sizes]
    base = results[0] if results else {}
    for r in results:
        r["speedup_vs_first"] = round(r["images_per_s"] / base["images_per_s"], 3)
        r["efficiency"] = round(r["speedup_vs_first"] * base["worker_nodes"] / r["worker_nodes"], 3)
        r["wall_ratio_vs_first"] = round(r["wall_s"] / base["wall_s"], 3)
    out = {"benchmark": "bench_scale", "cpu_cores": os.cpu_count(), "cpus_per_node": args.cpus_per_node,
           "results": results}
    if args.stage_costs:
        out["stage_costs"] = stage_costs()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
