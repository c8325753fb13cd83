"""Progress on a terminal: one bar for the run's images (done / total, images/s, time left) and one
per later phase (slice search, verification rounds), drawn only on a TTY; off a terminal, lines.
A library caller's plain callable gets lines only."""

from __future__ import annotations

import copy
import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
import yaml

from vbugs_ray.terminal import NullBar, Terminal, open_bar


def test_bars_only_where_they_can_be_drawn():
    lines = []
    assert isinstance(open_bar(lines.append, "images", 10), NullBar)  # a plain callable: no bar
    off = Terminal(stream=io.StringIO())
    assert not off.draws_bars() and not open_bar(off, "images", 10).live
    forced = Terminal(stream=io.StringIO(), bars=True)
    with open_bar(forced, "images", 10, unit="img") as bar:
        assert bar.live
        bar.update(4)
        forced("a line while the bar is open")
        bar.finish()
    text = forced.stream.getvalue()
    assert "[vbugs] a line while the bar is open" in text and "10/10" in text and "img" in text
    assert forced.open_bars == 0


def _run_on_a_terminal(args: list[str], columns: int = 120, rows: int = 40) -> tuple[int, str]:
    """Run a command with stderr on a pseudo-terminal of the given size; its whole output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.cli
@pytest.mark.trains
def test_an_audit_on_a_terminal_draws_a_bar_per_phase(default_spec_dict, tmp_path):
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=1440, verify={"images_per_hypothesis": 40, "max_hypotheses": 2, "rounds": 1})
    spec["run"] = {"executor": "local", "shard_rows": 500}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    status, out = _run_on_a_terminal([sys.executable, "-m", "vbugs_ray.cli", "audit", str(tmp_path / "spec.yaml"),
                                      "--out", str(tmp_path / "run")])
    assert status == 0, out[-3000:]
    states = [s for s in re.split(r"[\r\n]", out) if s.strip()]
    images = [s for s in states if s.startswith("[vbugs] images:")]
    assert images and re.search(r"100%\|.*\| 1440/1440 \[[0-9:]+<00:00, +[0-9.]+img/s\]", images[-1]), images[-3:]
    assert any(re.search(r"\| *[0-9]+/1440 \[[0-9:]+<[0-9:]+", s) for s in images[:-1])  # a time left, on the way
    assert any(s.startswith("[vbugs] slice search:") and "3/3" in s for s in states)
    assert any(s.startswith("[vbugs] verify round 1:") and "img" in s and "100%" in s for s in states)
    assert not [s for s in states if re.search(r"shard \d+/\d+ written", s)]  # the bar says it instead
    assert "[vbugs] report for people ->" in out
