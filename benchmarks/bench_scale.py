"""Toy-world audit throughput on a simulated multi-node cluster (``ray.cluster_utils.Cluster`` on
this machine): a head that runs no actor and 1, 2, 3 worker nodes with the same logical
resources each (CPUs, one logical GPU), the generator and the scoring actors one per node. Each
size runs the `vbugs audit` command as a whole process joined to the cluster by RAY_ADDRESS; the
result is JSON with wall time, images/s of the generation step (RUN_DIR/timing.json) and the
ratios to one node. On one machine the nodes share its cores, so this measures the overhead of
spreading (scheduling, object transfer between nodes), not a speed-up; see SCALING.md.

    python benchmarks/bench_scale.py [--images 7200] [--nodes 1,2,3] [--cpus-per-node 2] [--sd-turbo-flops]

``--sd-turbo-flops`` also counts the FLOPs of one SD-Turbo image (512 px, one step: the text
encoder, the UNet, the VAE decoder at their released sizes, random weights: the same compute),
with ``torch.utils.flop_counter`` on the CPU: the figure SCALING.md's generation cost starts from.
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


def sd_turbo_flops() -> dict:
    """FLOPs of one SD-Turbo image, counted per module kind while the full-size pipeline runs once."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_generate import full_size_pipeline

    pipe = full_size_pipeline("sd-turbo")
    t0 = time.perf_counter()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipe("a photo of a red fox in the snow", num_inference_steps=1, guidance_scale=0.0, height=512, width=512,
             generator=torch.Generator().manual_seed(0), output_type="np")
    by_module = {name: flops for name, flops in ((m, sum(v.values())) for m, v in counter.get_flop_counts().items())
                 if name in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel")}
    return {"flops_per_image": counter.get_total_flops(), "by_module": by_module,
            "cpu_seconds_one_image": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=7200)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--cpus-per-node", type=float, default=2.0)
    parser.add_argument("--shard-rows", type=int, default=1200)
    parser.add_argument("--sd-turbo-flops", action="store_true", help="also count one SD-Turbo image's FLOPs")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        results = [run_size(n, args.images, args.cpus_per_node, args.shard_rows, Path(folder)) for n in sizes]
    base = results[0]
    for r in results:
        r["speedup_vs_first"] = round(r["images_per_s"] / base["images_per_s"], 3)
        r["efficiency"] = round(r["speedup_vs_first"] * base["worker_nodes"] / r["worker_nodes"], 3)
        r["wall_ratio_vs_first"] = round(r["wall_s"] / base["wall_s"], 3)
    out = {"benchmark": "bench_scale", "cpu_cores": os.cpu_count(), "cpus_per_node": args.cpus_per_node,
           "results": results}
    if args.sd_turbo_flops:
        out["sd_turbo"] = sd_turbo_flops()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
