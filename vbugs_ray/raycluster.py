"""The one way into Ray: joining or starting it (``ray_session``), checking that the cluster can
place the spec's actors, and running shard functions as Ray tasks (``RayRunner``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Mapping

from vbugs_ray import rayaddress, runlock, signals
from vbugs_ray.terminal import verbose
from vbugs_ray.errors import SpecError, cut, one_line
from vbugs_ray.slices.counts import LocalRunner, Runner
from vbugs_ray.spec import RunSpec

Progress = Callable[[str], None]


def start_ray(run: RunSpec, progress: Progress) -> str | None:
    """Join the cluster the spec or RAY_ADDRESS names, else start a fresh local Ray. Returns
    "joined" or "local" when this call connected (and should disconnect), None if Ray was
    already initialised in this process."""
    import ray

    if ray.is_initialized():
        return None
    address = rayaddress.resolve(run)
    if address.local:
        # Logical CPUs above the core count let several fractional-CPU actor pools and Ray Data's
        # read/write tasks coexist on a small machine instead of deadlocking on CPU reservations.
        num_cpus = run.ray_num_cpus or max(os.cpu_count() or 1, 8)
        progress(f"starting a local Ray with {num_cpus} logical CPUs")
        _ray_init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return "local"
    timeout_s = rayaddress.connect_timeout(run)
    if address.text == "auto":
        address = rayaddress.latest_cluster(address)
    rayaddress.wait_until_reachable(address, timeout_s, progress)
    progress(f"joining the Ray cluster at {address}")
    with _deadline(rayaddress.join_deadline(timeout_s), address):
        try:
            if address.given == "auto":
                # Ray's own 'auto' (the cluster latest_cluster found, RAY_ADDRESS set aside as there):
                # only for it does Ray join with this machine's token when one exists, and a head
                # that `ray start` made uses token authentication; an explicit host:port never does
                with _environ_without("RAY_ADDRESS"):
                    _ray_init(address="auto", log_to_driver=False)
            else:
                _ray_init(address=address.text, log_to_driver=False)
        except ConnectionError as exc:
            raise address.error(f"could not join ({cut(one_line(str(exc)), 80)}); with token authentication, "
                                "set RAY_AUTH_MODE=token") from None
    return "joined"


@contextlib.contextmanager
def _environ_without(name: str) -> Iterator[None]:
    """``os.environ`` without ``name`` inside the block, as it was after."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _ray_init(**kwargs) -> None:
    """``ray.init``, which installs its own SIGTERM handler (``sys.exit(15)``) as it starts: a
    SIGTERM while it runs becomes ``Terminated`` like any other, and ours is back afterwards.
    Ray's INFO lines (where it started, Ray Data's per-operator progress every few seconds) are
    its own business: only its warnings and errors reach the user's terminal (``quiet_ray``),
    unless ``vbugs --verbose`` asked for all of Ray's output, its workers' logs included."""
    import ray

    try:
        quiet_ray()  # before: ray.init itself logs
        if verbose():
            ray.init(**{**kwargs, "log_to_driver": True})
        else:
            ray.init(logging_level=logging.WARNING, **kwargs)
        quiet_ray()
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:
            raise signals.Terminated() from None
        raise
    finally:
        if signals.was_installed():
            signals.install()


# Ray's notices a user of vbugs cannot act on: that a local Ray it started for one command uses
# token authentication (the secure default, kept), and that Ray Data's progress bars are off
# (vbugs prints its own progress).
RAY_NOTICES = ("Token authentication is enabled for this Ray cluster", "Progress bars disabled")


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_NOTICES)


def quiet_ray() -> None:
    """Ray Data without its progress bars, and Ray's terminal output without its INFO lines and
    ``RAY_NOTICES``, in the driver. Only the terminal handlers are quieted: Ray's session log
    files keep everything, and Ray's warnings and errors still reach the terminal. With
    ``vbugs --verbose``, nothing is quieted."""
    if verbose():
        return
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                if not any(isinstance(f, _DropNotices) for f in handler.filters):
                    handler.addFilter(_DropNotices())


@contextlib.contextmanager
def _deadline(seconds: float, address: rayaddress.RayAddress) -> Iterator[None]:
    """End the process with one line if joining takes longer than ``seconds``: a port that
    accepts connections but is no Ray GCS makes ``ray.init`` retry for many minutes, and a call
    blocked in Ray's C++ client cannot be interrupted from Python. A join that ends as the time
    runs out wins: ``give_up`` and the block's end take one lock, and whichever is first decides."""
    decided = threading.Lock()

    def give_up() -> None:
        if not decided.acquire(blocking=False):
            return  # joined (or failed) in time
        runlock.release_all()  # as the lock's own block would: no .lock or empty first-start folder left
        print(f"vbugs: error: {address.error(f'did not finish joining the cluster there within {seconds:g}s')}",
              file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(min(seconds, threading.TIMEOUT_MAX), give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        if not decided.acquire(blocking=False):  # give_up is running: it ends the process
            threading.Event().wait()
        timer.cancel()


def largest_node() -> dict[str, float]:
    """The most of each resource (CPU, GPU, custom ones, ``accelerator_type:X``) any one live
    node of the connected cluster has (an actor must fit on one node)."""
    import ray

    largest: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for node in ray.nodes():
        if node.get("Alive"):
            for kind, amount in node.get("Resources", {}).items():
                largest[kind] = max(largest.get(kind, 0.0), float(amount))
    return largest


ACCELERATOR = "accelerator_type:"


def _shortfall(roles: str, kind: str, want: float, have: float, largest: Mapping[str, float],
               autoscaling: bool) -> tuple[str, str]:
    """(field, message) for an actor that wants ``want`` of ``kind`` where nodes have ``have``."""
    role = roles.split("+")[0]
    shared = f"{' and '.join(roles.split('+'))} share one actor (run.fuse_scoring), which " if "+" in roles else ""
    if kind.startswith(ACCELERATOR):
        types = sorted(k[len(ACCELERATOR):] for k in largest if k.startswith(ACCELERATOR)) or ["none"]
        return (f"{role}.accelerator_type", f"{shared}asks for accelerator type {kind[len(ACCELERATOR):]!r} but no "
                f"Ray node has one (the nodes' types: {', '.join(types)})")
    if kind not in ("CPU", "GPU"):
        return (f"{role}.resources", f"{shared}asks for {want:g} of the custom resource {kind!r} per actor but "
                + (f"the largest Ray node has {have:g}" if have else "no Ray node has it")
                + "; start the nodes with it (ray start --resources) or drop it")
    field = f"{role}.num_{kind.lower()}s"
    if kind == "GPU" and have == 0:
        return (field, f"{shared}asks for {want:g} GPU per actor but the Ray cluster has none; set num_gpus: 0 "
                f"(device: auto then runs on the CPU) or run on a cluster with GPUs")
    fix = " or raise run.ray_num_cpus" if kind == "CPU" and not autoscaling else ""
    return (field, f"{shared}asks for {want:g} {kind}s per actor but the largest Ray node has {have:g}; "
            f"lower it (fractions are allowed){fix}")


def check_resources(actors: Mapping[str, Mapping[str, float]], autoscaling: bool, progress: Progress,
                    largest: Mapping[str, float] | None = None) -> None:
    """An actor that reserves more of a resource than any node has (CPUs, GPUs, a custom
    resource, an accelerator type) would wait forever, with only a warning buried in Ray's logs:
    say so at once. ``actors`` maps the roles an actor serves ("embedder+classifier" for a fused
    scoring actor) to what it needs (``pipeline.actor_needs``). On a cluster we joined an
    autoscaler may still add a node that fits, so there only warn."""
    largest = largest_node() if largest is None else largest
    for roles, needs in actors.items():
        for kind, want in needs.items():
            have = float(largest.get(kind, 0.0))
            if want <= have:
                continue
            field_path, message = _shortfall(roles, kind, want, have, largest, autoscaling)
            if not autoscaling:
                raise SpecError(field_path, message)
            progress(f"warning: {field_path} {message}; waiting for the autoscaler to add a node that fits")


@contextlib.contextmanager
def ray_session(run: RunSpec | None = None, progress: Progress = lambda _: None,
                actors: Mapping[str, Mapping[str, float]] | None = None) -> Iterator[None]:
    """Ray for one step of an audit: joined (``run.ray_address`` or RAY_ADDRESS) or started
    locally, checked to have a node for each of ``actors`` (roles -> what one actor needs), and
    disconnected (a local Ray shut down) afterwards if this call connected. Nothing else in
    vbugs_ray calls ``ray.init``."""
    previous = signal.getsignal(signal.SIGTERM)
    connected = start_ray(run or RunSpec(), progress)
    try:
        check_resources(actors or {}, autoscaling=connected != "local", progress=progress)
        yield
    finally:
        if connected:
            import ray

            ray.shutdown()
            signals.restore(previous)  # a library caller's handler, as it was before Ray


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
