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


_wanted = False  # install() was called in this process (the CLI), so ray.init's handler is replaced


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def install() -> None:
    """Make SIGTERM raise ``Terminated`` (only the main thread can set handlers; elsewhere a no-op)."""
    global _wanted
    if threading.current_thread() is threading.main_thread():
        _wanted = True
        signal.signal(signal.SIGTERM, _raise_terminated)


def installed() -> bool:
    """Whether SIGTERM raises ``Terminated`` now."""
    return signal.getsignal(signal.SIGTERM) is _raise_terminated


def was_installed() -> bool:
    """Whether this process asked for the handler (a library caller that did not keeps its own)."""
    return _wanted


def restore(previous) -> None:
    """Put back a SIGTERM handler read with ``signal.getsignal`` (None: set outside Python, left)."""
    global _wanted
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
        _wanted = previous is _raise_terminated
