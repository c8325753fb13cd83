"""The one way into Ray: joining or starting it (``ray_session``), checking that the cluster can
place the spec's GPU actors, and running shard functions as Ray tasks (``RayRunner``)."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Mapping

from vbugs_ray.errors import SpecError
from vbugs_ray.slices.counts import LocalRunner, Runner
from vbugs_ray.spec import RunSpec

Progress = Callable[[str], None]


def start_ray(run: RunSpec, progress: Progress) -> bool:
    """Connect to (or start) Ray; True if this call started it and should shut it down."""
    import ray

    if ray.is_initialized():
        return False
    address = run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # Logical CPUs above the core count let several fractional-CPU actor pools and Ray Data's
    # read/write tasks coexist on a small machine instead of deadlocking on CPU reservations.
    num_cpus = run.ray_num_cpus or max(os.cpu_count() or 1, 8)
    progress(f"starting a local Ray with {num_cpus} logical CPUs")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


def check_gpus(gpus_by_role: Mapping[str, float], autoscaling: bool, progress: Progress) -> None:
    """A role that reserves GPUs on a cluster without any would wait forever: say so at once
    (on a cluster we joined, an autoscaler may still add GPU nodes, so only warn there)."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    for role, want in gpus_by_role.items():
        if want > 0 and have == 0:
            message = (f"asks for {want:g} GPU per actor but the Ray cluster has none; set num_gpus: 0 "
                       f"(device: auto then runs on the CPU) or run on a cluster with GPUs")
            if not autoscaling:
                raise SpecError(f"{role}.num_gpus", message)
            progress(f"warning: {role}.num_gpus {message}; waiting for the autoscaler to add GPU nodes")


@contextlib.contextmanager
def ray_session(run: RunSpec | None = None, progress: Progress = lambda _: None,
                gpus_by_role: Mapping[str, float] | None = None) -> Iterator[None]:
    """Ray for one step of an audit: joined (``run.ray_address`` or RAY_ADDRESS) or started
    locally, the GPUs that ``gpus_by_role`` reserves checked, and shut down afterwards if this
    call started it. Nothing else in vbugs_ray calls ``ray.init``."""
    started = start_ray(run or RunSpec(), progress)
    try:
        check_gpus(gpus_by_role or {}, autoscaling=not started, progress=progress)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


class RayRunner:
    """Runs shard functions (slices.counts) as Ray tasks; their results (encoded shards) stay in
    the object store, so no process holds the whole table."""

    def __init__(self, num_cpus: float = 1.0):
        import ray

        self.ray, self.num_cpus, self.remotes = ray, num_cpus, {}

    def submit(self, fn, *args):
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(num_cpus=self.num_cpus)(fn)
        return self.remotes[fn].remote(*args)

    def get(self, handles):
        return self.ray.get(list(handles))

    def as_completed(self, handles):
        pending = list(handles)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])


@contextlib.contextmanager
def shard_runner(spread: bool, run: RunSpec | None = None, progress: Progress = lambda _: None) -> Iterator[Runner]:
    """Where the slice search counts: Ray tasks inside a ``ray_session`` when ``spread`` (a table
    of several shards), else this process (Ray's start-up would cost more than it saves)."""
    if not spread:
        yield LocalRunner()
        return
    with ray_session(run, progress):
        yield RayRunner()
