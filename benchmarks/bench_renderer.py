"""Toy-world renderer throughput on one core, JSON out.

Baseline side by side: the same renderer called one image at a time (what a naive per-row
generator stage would do), so the ratio shows what batching the pixel work buys.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from vbugs_ray.toyworld import renderer  # noqa: E402


def _rate(fn, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    results = []
    for resolution in (32, 64, 128):
        n = 4096 if resolution < 128 else 1024
        props = renderer.sample_properties(n, np.random.default_rng(0))
        seeds = list(range(n))
        batched = _rate(lambda: renderer.render(props, seeds, resolution), n)
        k = 256
        one_by_one = _rate(lambda: [renderer.render(props[i:i + 1], seeds[i:i + 1], resolution) for i in range(k)], k)
        results.append({"resolution": resolution, "images": n, "batched_images_per_s": round(batched, 1),
                        "one_at_a_time_images_per_s": round(one_by_one, 1),
                        "speedup": round(batched / one_by_one, 2)})
    print(json.dumps({"benchmark": "renderer", "threads": 1, "results": results}, indent=2))


if __name__ == "__main__":
    main()
