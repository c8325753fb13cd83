"""Two commands into one run directory: the second stops at once, in one line naming the first
(its PID and command), and leaves the folder as it was; once the first has gone (even killed,
without cleaning up) the folder is free again."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vbugs_ray.errors import RunStoreError
from vbugs_ray.runlock import LOCK_NAME, run_lock

pytestmark = pytest.mark.cli  # each test starts another process

HOLD = textwrap.dedent("""
    import sys, time
    from vbugs_ray.runlock import run_lock
    with run_lock(sys.argv[1], "vbugs audit"):
        print("held", flush=True)
        time.sleep(600)
""")


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def run_dir(tmp_path, default_spec_dict) -> Path:
    """A run directory as a started audit leaves it: spec.json and an empty rows/."""
    root = tmp_path / "run"
    (root / "rows").mkdir(parents=True)
    (root / "spec.json").write_text(json.dumps({"fingerprint": "x", "spec": default_spec_dict}))
    return root


@pytest.fixture
def holder(run_dir):
    """Another process holding the run dir's lock (killed at the end, never released)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("command", ["audit", "slices"])
def test_a_second_command_stops_naming_the_holder(command, run_dir, holder):
    before = _listing(run_dir)
    args = ["audit", "--out", str(run_dir), "--executor", "local"] if command == "audit" else ["slices", str(run_dir)]
    done = _vbugs(*args)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{run_dir} is in use by PID {holder.pid} (vbugs audit)" in lines[0]
    assert "wait for it to finish or use another --out" in lines[0]
    assert _listing(run_dir) == before


def test_a_killed_holder_leaves_no_lock(run_dir, holder):
    holder.kill()
    holder.wait()
    assert (run_dir / LOCK_NAME).exists()  # the file stays; the lock went with its process
    with run_lock(run_dir, "vbugs slices"):
        assert (run_dir / LOCK_NAME).read_text().split("\n")[0] == str(os.getpid())
    assert not (run_dir / LOCK_NAME).exists()


def test_the_lock_is_shared_within_a_process_and_refused_to_another(run_dir):
    with run_lock(run_dir, "vbugs audit"), run_lock(run_dir, "vbugs slices"):
        probe = subprocess.run([sys.executable, "-c", HOLD, str(run_dir)], capture_output=True, text=True)
        assert probe.returncode != 0 and f"in use by PID {os.getpid()}" in probe.stderr


def test_a_failed_first_start_leaves_no_folder(tmp_path):
    """The lock file is no content: a first start that wrote nothing leaves no run dir (here
    one made before the audit, which the lock would keep)."""
    from vbugs_ray.store import RunStore

    root = tmp_path / "run"
    root.mkdir()
    with pytest.raises(RunStoreError, match="boom"), run_lock(root, "vbugs audit", create=True):
        assert (root / LOCK_NAME).exists()
        RunStore(root).forget_failed_start()
        raise RunStoreError("boom")
    assert not root.exists()
