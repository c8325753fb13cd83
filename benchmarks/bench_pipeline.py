"""Pipeline throughput: the audit's stages alone, in one process, through `vbugs audit` on Ray,
and a Dataset-Interfaces-style loop, side by side on the same spec and prompts. JSON out.

- (a) each stage alone (generate; embed + filter; classify), in this process, no Ray, at the
  best of a few batch sizes (on the first --probe-images rows); ``min_a`` is the slowest stage's images/s (the pipeline's ceiling);
- (a') all stages one after another in this process, writing the run store (``LocalExecutor``:
  the same rows as the audit, PNG and Parquet included);
- (b) `vbugs audit` as a whole process on a Ray head node this script starts (as a cluster job
  would: RAY_ADDRESS), verification off; images/s over the generation phase (the run's timing.json: from
  joining Ray to the execution closed, actors' model loading included) and over the process;
  then the object store's spill statistics (`ray memory --stats-only`) and the model loads per
  role (RUN_DIR/loads.json);
- (c) one image per call: generator, embedder and classifier called image by image, as the
  Dataset Interfaces code generates and scores (fewer images: it is slow).

Also the generator's FLOPs per image (``torch.utils.flop_counter``) and, on a GPU with a known
bf16 peak, its model FLOP utilisation in (a); the peak GPU memory of this process (a, a', c).

Ratios: ``b_over_min_a``, ``b_over_a_serial``, ``b_over_c``. Default spec: the toy world
(jobs/toyworld.yaml); any spec with --spec (on a GPU machine: the full-size architectures).
Usage: python benchmarks/bench_pipeline.py [--spec SPEC.yaml] [--images 7200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vbugs_ray.grid import build_grid  # noqa: E402
from vbugs_ray.pipeline import ClassifyStage, EmbedStage, GenerateStage, LocalExecutor  # noqa: E402
from vbugs_ray.roles import registry  # noqa: E402
from vbugs_ray.spec import DEFAULT_SPEC, PIPELINE_ROLES, parse_spec  # noqa: E402
from vbugs_ray.store import RunStore, plan_shards  # noqa: E402

BATCH_SIZES = (32, 64, 128, 256, 512)


def _batches(batch: dict, size: int):
    n = len(batch["row_id"])
    for i in range(0, n, size):
        yield {k: v[i:i + size] for k, v in batch.items()}


def _rate(fn, batch: dict, size: int) -> float:
    t = time.perf_counter()
    for part in _batches(batch, size):
        fn(part)
    return len(batch["row_id"]) / (time.perf_counter() - t)


def stages_alone(spec, rows) -> dict:
    """(a): images/s of each stage alone at its best batch size; the generator's images feed the others."""
    batch = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}
    stages = {"generator": GenerateStage(spec), "embedder": EmbedStage(spec), "classifier": ClassifyStage(spec)}
    out = {}
    images = stages["generator"](batch)["image"]
    fed = dict(batch, image=images)
    fed.update({k: v for k, v in stages["embedder"](fed).items() if k not in fed})
    for role, stage in stages.items():
        rates = {size: _rate(stage, fed if role != "generator" else batch, size) for size in BATCH_SIZES}
        best = max(rates, key=rates.get)
        out[role] = {"images_per_s": round(rates[best], 1), "best_batch_size": best,
                     "by_batch_size": {str(k): round(v, 1) for k, v in rates.items()}}
    return out


# Dense bf16 peak FLOP/s by device name (vendor datasheets, without sparsity), for the MFU.
BF16_PEAK = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10G", 125e12), ("RTX 4090", 165e12))


def generator_flops(spec, rows, batch_size: int, images_per_s: float) -> dict:
    """The generator's FLOPs per image, counted by ``torch.utils.flop_counter`` over one batch of
    ``batch_size`` rows (the matmuls, convolutions and attention of its torch modules; a numpy
    renderer counts none), the FLOP/s that its stage-alone rate implies, and with a known GPU,
    the model FLOP utilisation against the device's bf16 peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    stage = GenerateStage(spec)
    batch = {name: rows.column(name).to_numpy(zero_copy_only=False)[:batch_size] for name in ("prompt", "seed")}
    with FlopCounterMode(display=False) as counter:
        stage(batch)
    per_image = counter.get_total_flops() / len(batch["prompt"])
    achieved = per_image * images_per_s
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    peak = next((flops for key, flops in BF16_PEAK if key in name), None)
    return {"flops_per_image": per_image, "achieved_flops_per_s": achieved, "device_bf16_peak": peak,
            "mfu": round(achieved / peak, 4) if peak and per_image else None}


def peak_gpu_memory_gb() -> float | None:
    """The most GPU memory this process held at once (the in-process measurements)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def all_in_process(spec, rows, folder: Path) -> dict:
    """(a'): the stages one after another in this process, into a run store (models loaded inside)."""
    store = RunStore(folder / "local")
    store.rows_dir.mkdir(parents=True)
    executor = LocalExecutor(spec)
    t = time.perf_counter()
    loads = executor.run(rows, store, plan_shards(rows.num_rows, spec.run.shard_rows))
    seconds = time.perf_counter() - t
    executor.close()
    return {"images_per_s": round(rows.num_rows / seconds, 1), "seconds": round(seconds, 2), "model_loads": loads}


def one_at_a_time(spec, rows, n: int) -> dict:
    """(c): every model called once per image (the Dataset Interfaces loop)."""
    models = {role: registry.create(role, getattr(spec, role), spec) for role in PIPELINE_ROLES}
    prompts, seeds = rows.column("prompt").to_pylist()[:n], rows.column("seed").to_numpy()[:n]
    t = time.perf_counter()
    for prompt, seed in zip(prompts, seeds):
        image = models["generator"].generate([prompt], np.asarray([seed]))
        models["embedder"].embed_images(image)
        models["classifier"].predict_proba(image)
    seconds = time.perf_counter() - t
    return {"images_per_s": round(n / seconds, 1), "images": n, "seconds": round(seconds, 2)}


def through_vbugs(spec_dict: dict, folder: Path, num_cpus: int) -> dict:
    """(b): `vbugs audit` on a Ray head node started here, then the node's spill statistics."""
    bin_dir = Path(sys.executable).parent
    ray, vbugs = str(bin_dir / "ray"), str(bin_dir / "vbugs")
    spec_path, run_dir = folder / "spec.yaml", folder / "ray-run"
    spec_path.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([ray, "start", "--head", f"--num-cpus={num_cpus}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        t = time.perf_counter()
        done = subprocess.run([vbugs, "audit", str(spec_path), "--out", str(run_dir), "--executor", "ray"],
                              capture_output=True, text=True, env=dict(env, RAY_ADDRESS="auto"))
        process_s = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(f"vbugs audit failed: {done.stderr.strip().splitlines()[-1]}")
        memory = subprocess.run([ray, "memory", "--stats-only", "--address", "auto"], capture_output=True, text=True,
                                env=env).stdout
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
    # the audit's line per published shard off a terminal (flow.run_pipeline's ``published``)
    shards = re.findall(r"shard \d+/\d+ written \((\d+) rows; \d+/\d+ images, \d+ images/s, (\d+)s", done.stderr)
    if not shards:
        raise SystemExit("vbugs audit printed no shard line this benchmark can read; its format changed? "
                         + " | ".join(done.stderr.strip().splitlines()[-3:]))
    shard_rows, shard_times = [int(r) for r, _ in shards], [float(t) for _, t in shards]
    spilled = re.search(r"Spilled (\d+) MiB, (\d+) objects", memory)
    n = spec_dict["budget"]
    # the run's own clock (timing.json, to the hundredth): from joining Ray to the execution closed,
    # actors' model loading included; the shard lines give whole seconds only
    generation_s = json.loads((run_dir / "timing.json").read_text())["generation"]
    return {
        "images_per_s": round(n / generation_s, 1) if generation_s else None,
        "generation_seconds": generation_s, "last_shard_published_s": shard_times[-1],
        "process_seconds": round(process_s, 2),
        # after the first shard: the pipeline's steady state, without starting Ray Data and the actors
        "images_per_s_after_first_shard": round(sum(shard_rows[1:]) / (shard_times[-1] - shard_times[0]), 1)
        if len(shard_times) > 2 and shard_times[-1] > shard_times[0] else None,
        "seconds_to_first_shard": shard_times[0] if shard_times else None,
        "images_per_s_whole_process": round(n / process_s, 1),
        "model_loads": json.loads((run_dir / "loads.json").read_text()),
        "spilled_mib": int(spilled.group(1)) if spilled else 0, "spilled_objects": int(spilled.group(2)) if spilled else 0,
        "peak_rss_gb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--images", type=int, default=28800, help="images for (a') and (b): enough that starting "
                                                                  "Ray and the actors (about 6 s here) is not most of it")
    ap.add_argument("--probe-images", type=int, default=7200, help="images per batch size tried in (a)")
    ap.add_argument("--loop-images", type=int, default=256, help="images for (c)")
    ap.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the Ray head node")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    spec_dict = yaml.safe_load(args.spec.read_text())
    spec_dict.update(budget=args.images, verify=False)
    spec_dict.pop("images_per_cell", None)
    spec = parse_spec(spec_dict)
    for role in PIPELINE_ROLES:
        registry.prepare(role, getattr(spec, role), spec, lambda _: None)  # trained/cached before any timing
    rows = build_grid(spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        b = through_vbugs(spec_dict, folder, args.num_cpus)
        a = stages_alone(spec, rows.slice(0, min(rows.num_rows, args.probe_images)))
        flops = generator_flops(spec, rows, a["generator"]["best_batch_size"], a["generator"]["images_per_s"])
        a_serial = all_in_process(spec, rows, folder)
        c = one_at_a_time(spec, rows, args.loop_images)
    min_a = min(v["images_per_s"] for v in a.values())
    result = {
        "benchmark": "pipeline", "spec": str(args.spec), "images": rows.num_rows, "device": _device(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "a_stages_alone": a, "min_a": min_a, "a_serial": a_serial, "b_vbugs_audit_on_ray": b, "c_one_at_a_time": c,
        "b_over_min_a": round(b["images_per_s"] / min_a, 3) if b["images_per_s"] else None,
        "b_over_a_serial": round(b["images_per_s"] / a_serial["images_per_s"], 3) if b["images_per_s"] else None,
        "b_over_c": round(b["images_per_s"] / c["images_per_s"], 2) if b["images_per_s"] else None,
        "peak_rss_gb_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak_gpu_memory_gb_this_process": peak_gpu_memory_gb(), "generator_flops": flops,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or 'x86_64'})"


if __name__ == "__main__":
    main()
