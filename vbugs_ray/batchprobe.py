"""``batch_size: auto``: the batch size of a model stage, measured on the device its actors get.

Too small a batch leaves a GPU idle between kernel launches; too large runs out of memory, or
only adds latency once the device is busy. Which is which depends on the model, the dtype and the
device, so it is measured rather than guessed: the role's backend is built where an actor of it
would run (a Ray task reserving the role's ``num_cpus`` / ``num_gpus``; in this process with the
local executor), and synthetic batches of 1, 2, 4, ... rows go through it, each timed after one
warm-up call, until the device runs out of memory, two doublings in a row gain less than
``GAIN`` in images/s, ``max_batch`` is reached, or the probe has spent ``budget_s``. The batch
chosen is the smallest within ``WITHIN`` of the best rate (less memory, and batches stream).

A probe builds the model once more, so its result is kept in ``RUN_DIR/batch_sizes.json`` per
role, keyed by everything but the batch size that shapes the measurement (backend, options,
device, dtype, resources): a re-run, a resumed run and its verification rounds reuse it. Delete
the file to measure again (on other hardware, say). The batch size does not change any row: an
image depends on its own prompt and seed only, so the rows do not depend on the probe.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.cache import key_of
from vbugs_ray.roles import registry
from vbugs_ray.shipping import pack, unpacked
from vbugs_ray.spec import AUTO, PIPELINE_ROLES, AuditSpec, RoleSpec, pinning

Progress = Callable[[str], None]

FILE = "batch_sizes.json"
MAX_BATCH = 1024
BUDGET_S = 60.0
GAIN = 1.10  # a doubling must raise images/s by 10% to count as a gain
WITHIN = 0.95  # the smallest batch with at least 95% of the best rate is chosen
IMAGE_SIDE = 256  # synthetic images for the embedder and classifier (they resize to their own input)


def choose(rates: list[tuple[int, float]]) -> int:
    """The smallest measured batch size whose images/s is within ``WITHIN`` of the best."""
    best = max(rate for _, rate in rates)
    return min(b for b, rate in rates if rate >= WITHIN * best)


def _out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _synthetic(role: str, spec: AuditSpec, n: int) -> tuple:
    """Inputs of ``n`` rows for the role: the spec's prompts for the generator, noise images for
    the others (a classifier's or embedder's cost depends on its own input size, not the source's)."""
    if role == "generator":
        words = {a.name: a.phrases[0] for a in spec.axes}
        prompt = spec.prompt.format(**{"class": spec.class_phrases[0], **words})
        return [prompt] * n, np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8),)


def _call(role: str, backend: Any) -> Callable:
    """The method a stage calls per batch."""
    return getattr(backend, {"generator": "generate", "embedder": "embed_images", "classifier": "predict_proba"}[role])


def measure(role: str, spec: AuditSpec, max_batch: int = MAX_BATCH, budget_s: float = BUDGET_S,
            backends: dict | None = None, shipped: dict | None = None) -> dict:
    """Images/s of the role's backend at batch sizes 1, 2, 4, ... (see the module docstring), in
    this process; returns {"rates": [[batch, images/s], ...], "stopped": why, "device": ...}."""
    registry.adopt(backends)  # backends the driver registered, when this runs as a Ray task
    role_spec = dataclasses.replace(getattr(spec, role), batch_size=1)
    with unpacked(shipped):  # the driver's trained weights, on this node
        backend = registry.create(role, role_spec, spec)
    call = _call(role, backend)
    rates: list[tuple[int, float]] = []
    start, batch, stopped, flat = time.perf_counter(), 1, "max_batch", 0
    while batch <= max_batch:
        inputs = _synthetic(role, spec, batch)
        try:
            call(*inputs)  # warm-up: allocations, kernel selection
            t0 = time.perf_counter()
            call(*inputs)
            rate = batch / max(time.perf_counter() - t0, 1e-9)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory ends the probe quietly
            if not _out_of_memory(exc):
                raise
            _free_cuda()
            stopped = "out of memory"
            break
        best = max((r for _, r in rates), default=0.0)
        rates.append((batch, rate))
        flat = flat + 1 if rate < GAIN * best else 0
        if flat >= 2:
            stopped = "no gain"
            break
        if time.perf_counter() - start > budget_s:
            stopped = "time budget"
            break
        batch *= 2
    if not rates:
        raise RuntimeError(f"{role}: out of memory at a batch of 1 row while probing batch_size: auto")
    return {"rates": [[b, r] for b, r in rates], "stopped": stopped, "device": _device_name()}


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"


def _role_key(role_spec: RoleSpec) -> str:
    data = dataclasses.asdict(role_spec)
    for name in ("batch_size", "concurrency", "max_concurrency"):  # the pool's size leaves a batch's speed alone
        data.pop(name)
    return key_of(data)[:16]


def _probe_where(role: str, spec: AuditSpec, shipped: list[Path] = ()) -> dict:
    """``measure`` where the role's actors run: a Ray task with the role's resources and
    placement (and the driver's trained weights), or here."""
    if spec.run.executor != "ray":
        return measure(role, spec)
    import ray

    role_spec = getattr(spec, role)
    task = ray.remote(num_cpus=role_spec.num_cpus, num_gpus=role_spec.num_gpus or 0,
                      **pinning(role_spec.accelerator_type, role_spec.resources))(measure)
    return ray.get(task.remote(role, spec, backends=registry.added(), shipped=pack(list(shipped))))


def resolve(spec: AuditSpec, run_dir: str | Path, progress: Progress = lambda _: None, shipped: list[Path] = (),
            probe: Callable[[str, AuditSpec], dict] | None = None, roles=PIPELINE_ROLES) -> AuditSpec:
    """``spec`` with every ``batch_size: auto`` replaced by a measured one (kept in
    ``RUN_DIR/batch_sizes.json``, measured only when missing there). ``shipped``: the cache files
    a probe on another node needs (roles' ``prepare``)."""
    auto = [role for role in roles if getattr(spec, role).batch_size == AUTO]
    if not auto:
        return spec
    probe = probe or (lambda role, spec: _probe_where(role, spec, shipped))
    path = Path(run_dir) / FILE
    held = json.loads(path.read_text()) if path.exists() else {}
    chosen = {}
    for role in auto:
        key = _role_key(getattr(spec, role))
        entry = held.get(role)
        if entry is None or entry.get("key") != key:
            progress(f"{role}: measuring batch_size: auto on its device (batches of 1, 2, 4, ...)")
            found = probe(role, spec)
            entry = {"key": key, "batch_size": choose([tuple(r) for r in found["rates"]]), **found}
            held[role] = entry
            atomic_write_json(path, held)
            rates = ", ".join(f"{b}: {r:.1f}/s" for b, r in found["rates"])
            progress(f"{role}: batch_size {entry['batch_size']} on {found['device']} ({rates}; "
                     f"stopped: {found['stopped']})")
        chosen[role] = dataclasses.replace(getattr(spec, role), batch_size=int(entry["batch_size"]))
    return dataclasses.replace(spec, **chosen)
