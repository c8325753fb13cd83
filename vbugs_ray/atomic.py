"""Writing a file so that readers see the old one or the whole new one, never half of it; and
checking, before the work that produces it, that it can be written at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from vbugs_ray.errors import OutputError
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


def check_output(path: str | Path, name: str = "--out", folder: bool = False) -> Path:
    """Refuse, in one OutputError line naming ``name`` and the path, an output that cannot be
    written, before the work whose result it would hold starts (not after an hour of it): a
    read-only or unwritable folder (``/proc``), a folder where a file goes, a file where a folder
    goes, a result file's missing folder. A ``folder`` output (a run directory) may not exist
    yet: the folder it would be made in is checked, and nothing is created. Proven by writing
    and removing a hidden file there."""
    path = Path(path)
    where = _output_folder(path, name, folder)
    probe = where / f".{path.name or 'out'}.{os.getpid()}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{name} {path}: cannot write in {where} ({exc.strerror or exc}): "
                          "choose a folder you can write to") from None
    return path


def _output_folder(path: Path, name: str, folder: bool) -> Path:
    """The existing folder the output is written in (or, for a ``folder`` output not made yet,
    made in), or an OutputError."""
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{name} {path} is a file, not a folder: give a folder's path (one that does "
                              "not exist yet is created)")
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise OutputError(f"{name} {path}: {existing} is a file, not a folder: choose another path")
        return existing
    if path.is_dir():
        raise OutputError(f"{name} {path} is a folder: give a file's path, e.g. {path / 'result.json'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{name} {path}: {path.parent} is a file, not a folder: choose another path")
    if not path.parent.is_dir():
        raise OutputError(f"{name} {path}: its folder {path.parent} does not exist: create it first "
                          f"(mkdir -p {path.parent}) or choose another path")
    return path.parent
