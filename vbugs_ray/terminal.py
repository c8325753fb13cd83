"""What a person sees on stderr while vbugs works: ``[vbugs] ...`` lines, and on a terminal a
progress bar per long phase (the run's images; the search; captions; each verification round)
with done / total, rate and time left (tqdm). Off a terminal (CI logs, ``ray job logs``) there are
no bars: the phases print their own lines instead, one per finished shard.

Code that reports progress takes any ``progress(message)`` callable; it asks for a bar with
``open_bar(progress, ...)``, which gives a live bar only when ``progress`` can draw one (has a
``bar`` method, as ``Terminal`` does) and a silent stand-in otherwise, so library callers with
their own callable get lines only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, TextIO

VERBOSE_ENV = "VBUGS_VERBOSE"  # set by `vbugs --verbose`: Ray's own output reaches the terminal too


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class NullBar:
    """A bar that draws nothing (off a terminal, or for a caller without bars)."""

    live = False

    def update(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        """Fill the bar: the phase ended before its planned total (a search with nothing left to expand)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(NullBar):
    """A tqdm bar on the terminal; while it is open, lines are written above it."""

    live = True

    def __init__(self, terminal: Terminal, phase: str, total: int | None, unit: str):
        from tqdm import tqdm

        self.terminal = terminal
        # a pseudo-terminal may report a 0 x 0 size, and tqdm hides a bar beyond the last row: then
        # a fixed size
        sized = min(terminal.size()) > 0
        self.tqdm = tqdm(total=total, desc=f"[vbugs] {phase}", unit=unit, file=terminal.stream, dynamic_ncols=sized,
                         ncols=None if sized else 100, nrows=None if sized else 24, smoothing=0.05, mininterval=0.2)
        terminal.open_bars += 1

    def update(self, n: int = 1) -> None:
        self.tqdm.update(n)

    def finish(self) -> None:
        if self.tqdm is not None and self.tqdm.total:
            self.tqdm.update(max(0, self.tqdm.total - self.tqdm.n))

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None
            self.terminal.open_bars -= 1


class Terminal:
    """The CLI's ``progress``: lines prefixed ``[vbugs]`` on stderr, bars when it is a terminal.
    ``bars`` forces them on or off (default: on when the stream is a TTY and TERM is not dumb)."""

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None):
        self._stream, self._bars = stream, bars
        self.open_bars = 0

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up at each use: tests and callers may swap stderr

    def size(self) -> tuple[int, int]:
        """(columns, rows) of the terminal, (0, 0) when it cannot tell."""
        try:
            return tuple(os.get_terminal_size(self.stream.fileno()))
        except (OSError, ValueError, AttributeError):
            return (0, 0)

    def draws_bars(self) -> bool:
        if self._bars is not None:
            return self._bars
        return self.stream.isatty() and os.environ.get("TERM", "") != "dumb"

    def __call__(self, message: str) -> None:
        line = f"[vbugs] {message}"
        if self.open_bars:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def bar(self, phase: str, total: int | None, unit: str = "it") -> NullBar:
        return _Bar(self, phase, total, unit) if self.draws_bars() else NullBar()


stderr = Terminal()  # the CLI's and the flow's default progress


def open_bar(progress: Callable[[str], None] | Any, phase: str, total: int | None, unit: str = "it") -> NullBar:
    """A bar from ``progress`` if it draws them, else a silent one (see the module's docstring)."""
    bar = getattr(progress, "bar", None)
    return bar(phase, total, unit) if callable(bar) else NullBar()
