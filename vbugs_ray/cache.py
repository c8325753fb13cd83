"""Where trained toy-world weights live: one file per training config, trained on a miss and
written atomically, so that concurrent actors and interrupted runs never see half a file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from vbugs_ray.atomic import atomic_write
from vbugs_ray.errors import RunStoreError

_forbidden = 0  # > 0 while an actor builds its backends from shipped weights (vbugs_ray.shipping)


@contextlib.contextmanager
def training_forbidden() -> Iterator[None]:
    """No training inside: weights must already be in the cache (shipped by the driver)."""
    global _forbidden
    _forbidden += 1
    try:
        yield
    finally:
        _forbidden -= 1


def cache_dir() -> Path:
    """$VBUGS_CACHE, else ~/.cache/vbugs_ray."""
    root = os.environ.get("VBUGS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vbugs_ray")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_of(config: Any) -> str:
    """Stable short hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_file(kind: str, config: Any, suffix: str = ".pt") -> Path:
    """Path of the cache entry for ``config`` (it may not exist yet)."""
    return cache_dir() / f"{kind}-{key_of(config)}{suffix}"


def trained(kind: str, config: Any, train: Callable[[], Any], progress: Callable[[str], None]) -> Path:
    """The cached ``torch.save`` of ``train()`` for ``config``, training first on a cache miss."""
    path = cached_file(kind, config)
    if not path.exists() and _forbidden:
        raise RunStoreError(f"{path.name} is not in this node's cache ({cache_dir()}) and was not shipped by the "
                            "driver; the driver trains toy weights before any actor starts (roles' prepare)")
    if not path.exists():
        import torch

        progress(f"{kind}: training (cache miss: {path.name})")
        result = train()
        atomic_write(path, lambda tmp: torch.save(result, tmp))
    return path
