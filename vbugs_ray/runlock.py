"""One writer per run directory: ``RUN_DIR/.lock``, held with ``flock`` for the life of a command.

Two audits into one folder would race for the same staging folders and fail half-way, so a
command that writes into a run directory takes the lock first and a second one stops at once, in
one line naming the holder. The lock is the ``flock`` on an open file, not the file: the OS drops
it when its process dies, so a killed run never leaves a stale lock, and a ``.lock`` file left
behind is no obstacle. The holder writes its PID and command into the file for that message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator

from vbugs_ray.errors import RunStoreError, one_line

LOCK_NAME = ".lock"
HOLDER_CHARS = 120  # the holder's command, as quoted in the message, is cut to this many characters

_held: dict[str, int] = {}  # run dirs this process holds -> how many nested `run_lock`s hold it
_open: dict[str, tuple[int, Path, bool]] = {}  # run dirs this process holds -> (fd, lock path, created)


def _command(label: str) -> str:
    """What the holder runs, for the message: the command line when this is the CLI."""
    if Path(sys.argv[0]).name in ("vbugs", "cli.py", "__main__.py"):
        label = shlex.join([label.split()[0], *sys.argv[1:]])
    text = one_line(label)
    return text if len(text) <= HOLDER_CHARS else text[: HOLDER_CHARS - 3] + "..."


def _holder(fd: int) -> str:
    """'PID 123 (vbugs audit spec.yaml --out run)', read from the lock file."""
    with contextlib.suppress(OSError):
        pid, _, command = os.pread(fd, 4096, 0).decode(errors="replace").strip().partition("\n")
        if pid.isdigit():
            return f"PID {pid} ({command})" if command else f"PID {pid}"
    return "another process"


def _acquire(path: Path, label: str) -> int:
    """An open fd holding the lock on ``path``. A file unlinked by its last holder between our
    open and our flock is no lock: then open the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise RunStoreError(f"{path.parent} is in use by {holder}: wait for it to finish or use another --out") \
                from None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_command(label)}\n".encode(), 0)
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _release(fd: int, path: Path, created: bool) -> None:
    """Remove the lock file while still holding it (so no one locks a file about to vanish),
    and the run dir too if this lock made it and nothing else was written there."""
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            path.unlink()
    os.close(fd)
    if created:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


@contextlib.contextmanager
def run_lock(run_dir: str | Path, label: str, create: bool = False) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` for the block, or raise RunStoreError naming its holder (touching
    nothing else in the folder). Nested calls in one process share the lock. ``create``: make
    the run dir if missing (an audit's first start); otherwise a missing folder is not locked
    (the command's own check says it is no run directory)."""
    root = Path(run_dir)
    key = os.path.realpath(root)
    if not (create or root.is_dir()):
        yield
        return
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    try:
        fd = _acquire(path, label)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    _held[key], _open[key] = 1, (fd, path, created)
    try:
        yield
    finally:
        _held.pop(key, None)
        if _open.pop(key, None):
            _release(fd, path, created)


def release_all() -> None:
    """Release every lock this process holds, as the ends of their blocks would, for a process
    about to end at once (``os._exit`` from another thread, where no ``finally`` runs)."""
    for key in list(_open):
        held = _open.pop(key, None)  # the block's own end may take it at the same moment
        if held is not None:
            _release(*held)


def remove_run_dir_if_empty(root: Path) -> None:
    """Remove ``root`` if nothing but the lock file is in it (a failed first start): the lock
    file is no content, and it goes last, while its holder still holds it."""
    with contextlib.suppress(OSError):
        if set(os.listdir(root)) <= {LOCK_NAME}:
            (root / LOCK_NAME).unlink(missing_ok=True)
            root.rmdir()
