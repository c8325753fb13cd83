"""Writing a file so that readers see the old one or the whole new one, never half of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from vbugs_ray.jsontext import to_json


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` for a hidden file beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as strict JSON (non-finite numbers as null: see jsontext)."""
    return atomic_write(path, lambda tmp: tmp.write_text(to_json(data)))
