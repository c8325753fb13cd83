"""Where trained toy-world weights live: one file per training config, trained on a miss and
written atomically, so that concurrent actors and interrupted runs never see half a file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from vbugs_ray.atomic import atomic_write


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
    if not path.exists():
        import torch

        progress(f"{kind}: training (cache miss: {path.name})")
        result = train()
        atomic_write(path, lambda tmp: torch.save(result, tmp))
    return path
