"""SIGTERM ends a command the way Ctrl-C does: as an exception in the main thread, so that every
``finally`` runs on the way out (the local Ray shut down with all its processes, the run lock
released, a half-written staging folder removed) and the CLI ends with one line.

Python's default for SIGTERM is to die at once, leaving a local Ray's raylet, GCS and agents
behind; ``ray.init`` installs its own handler (``sys.exit``), which skips the CLI's message.
So the CLI installs this one, and ``raycluster`` installs it again after ``ray.init``.
SIGKILL cannot be caught: README "When things go wrong" says what it leaves.
"""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM. A KeyboardInterrupt, so code that stops cleanly on
    Ctrl-C (Ray Data cancelling an execution among it) does the same here."""


def _raise_terminated(signum, frame):
    raise Terminated()


def install() -> None:
    """Make SIGTERM raise ``Terminated`` (only the main thread can set handlers; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _raise_terminated
