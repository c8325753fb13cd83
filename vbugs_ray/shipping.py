"""Weights the driver prepared (the toy world's trained models) reach actors on every node
through Ray's object store, never by training again: ``pack`` puts each cache file once per
execution, ``unpack`` writes the missing ones into the node's own cache before a backend loads,
and while it builds the backends no training may start (``cache.training_forbidden``): a node
without the weights fails loudly instead of spending minutes on a copy of its own."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from vbugs_ray import cache
from vbugs_ray.atomic import atomic_write


def pack(paths: list[Path]) -> dict[str, Any]:
    """{cache file name: object ref of its bytes} for the files under the driver's cache (other
    paths, a user's model folders, are read where they are: shared storage or every node)."""
    import ray

    root = cache.cache_dir().resolve()
    return {path.name: ray.put(path.read_bytes()) for path in dict.fromkeys(paths)
            if path.resolve().parent == root}


@contextlib.contextmanager
def unpacked(packed: dict[str, Any] | None) -> Iterator[None]:
    """Inside a Ray actor or task: the shipped files in this node's cache, then training
    forbidden while the block builds its backends. ``None`` (in the driver's own process):
    nothing to do, training allowed as before."""
    if packed is None:
        yield
        return
    import ray

    root = cache.cache_dir()
    for name, ref in packed.items():
        target = root / name
        if not target.exists():
            data = ray.get(ref)
            atomic_write(target, lambda tmp: tmp.write_bytes(data))
    with cache.training_forbidden():
        yield
