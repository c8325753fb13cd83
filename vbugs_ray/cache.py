"""Where trained toy-world weights live: one file per training spec, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """$VBUGS_CACHE, else ~/.cache/vbugs_ray."""
    root = os.environ.get("VBUGS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vbugs_ray")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_of(config: Any) -> str:
    """Stable short hash of a JSON-able training config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_file(kind: str, config: Any, suffix: str = ".pt") -> Path:
    """Path of the cache entry for ``config`` (it may not exist yet)."""
    return cache_dir() / f"{kind}-{key_of(config)}{suffix}"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename into place, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
