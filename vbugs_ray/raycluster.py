"""Joining or starting Ray for an audit, and checking that the cluster can place its GPU actors."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from vbugs_ray.spec import AuditSpec, SpecError

Progress = Callable[[str], None]


def start_ray(spec: AuditSpec, progress: Progress) -> bool:
    """Connect to (or start) Ray; True if this call started it and should shut it down."""
    import ray

    if ray.is_initialized():
        return False
    address = spec.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # Logical CPUs above the core count let several fractional-CPU actor pools and Ray Data's
    # read/write tasks coexist on a small machine instead of deadlocking on CPU reservations.
    num_cpus = spec.run.ray_num_cpus or max(os.cpu_count() or 1, 8)
    progress(f"starting a local Ray with {num_cpus} logical CPUs")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def check_gpus(spec: AuditSpec, autoscaling: bool, progress: Progress) -> None:
    """A role that reserves GPUs on a cluster without any would wait forever: say so at once
    (on a cluster we joined, an autoscaler may still add GPU nodes, so only warn there)."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    for role in ("generator", "classifier", "embedder", "captioner"):
        role_spec = getattr(spec, role)
        want = role_spec.num_gpus if role_spec is not None else 0
        if want > 0 and have == 0:
            message = (f"asks for {want:g} GPU per actor but the Ray cluster has none; set num_gpus: 0 "
                       f"(device: auto then runs on the CPU) or run on a cluster with GPUs")
            if not autoscaling:
                raise SpecError(f"{role}.num_gpus", message)
            progress(f"warning: {role}.num_gpus {message}; waiting for the autoscaler to add GPU nodes")


@contextlib.contextmanager
def ray_session(spec: AuditSpec, progress: Progress) -> Iterator[None]:
    """Ray for one step of an audit: joined or started, its GPUs checked, and shut down afterwards
    if this call started it."""
    started = start_ray(spec, progress)
    try:
        check_gpus(spec, autoscaling=not started, progress=progress)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
