"""RUN_DIR/timing.json: the seconds each step of a run spent working, for the report's run time.

Generation and verification add up over resumed attempts (an interrupted run's first hour
counts); the slice search is recomputed whole each time, so its last time replaces the old one.
"""

from __future__ import annotations

import json
from pathlib import Path

from vbugs_ray.atomic import atomic_write_json

FILE = "timing.json"


def read(run_dir: str | Path) -> dict[str, float]:
    path = Path(run_dir) / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def add(run_dir: str | Path, step: str, seconds: float) -> None:
    """Add ``seconds`` to ``step`` (generation, verification: work that resumes)."""
    data = read(run_dir)
    data[step] = round(data.get(step, 0.0) + seconds, 2)
    atomic_write_json(Path(run_dir) / FILE, data)


def put(run_dir: str | Path, step: str, seconds: float) -> None:
    """Set ``step`` to ``seconds`` (the slice search: each run of it is complete on its own)."""
    data = read(run_dir)
    data[step] = round(seconds, 2)
    atomic_write_json(Path(run_dir) / FILE, data)
