"""`vbugs submit / status / logs`: a toy-world audit as a Ray job on a head node the test starts
(with its dashboard's job server), followed to its end, its report read; and the one-line
answers for a wrong address, a missing token and an unknown job."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def _vbugs(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


@pytest.fixture(scope="module")
def job_server():
    """A Ray head with its dashboard (the job server) on free ports; stopped afterwards."""
    port, dashboard = _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="vbs", dir="/tmp")
    # every port its own: a head that stopped a moment ago (another test's) may still hold the defaults
    agents = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
              f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    head = subprocess.Popen([str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                             f"--dashboard-port={dashboard}", "--include-dashboard=true", "--num-cpus=8",
                             "--disable-usage-stats", *agents], env=_env(RAY_TMPDIR=tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = _vbugs("status", "no-such-job", "--address", url, env=_env(RAY_AUTH_MODE="token"), timeout=60)
            if "does not exist" in probe.stderr:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the job server at {url} did not answer within 90 s: {probe.stderr[-500:]}")
        yield url
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        head.wait(timeout=60)


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
def test_an_audit_submitted_as_a_job_is_followed_to_its_report(job_server, default_spec_dict, tmp_path):
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=600, verify=False)
    spec["run"]["runtime_env"] = {"env_vars": {"VBUGS_FROM_SPEC": "1"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "env.yaml").write_text(yaml.safe_dump({"env_vars": {"VBUGS_FROM_FLAG": "1"}}))
    run_dir = tmp_path / "run"
    env = _env(RAY_AUTH_MODE="token")
    done = _vbugs("submit", str(tmp_path / "spec.yaml"), "--address", job_server, "--out", str(run_dir),
                  "--runtime-env", str(tmp_path / "env.yaml"), "--follow", env=env)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    job = done.stdout.splitlines()[0]
    assert job.startswith("raysubmit_")
    assert "[vbugs] joining the Ray cluster at" in done.stdout  # the job's own log, followed
    assert "slice search:" in done.stdout and f"job {job}: SUCCEEDED" in done.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_images"] == 600 and report["flagged_slices"]
    assert (run_dir / "report.html").exists()

    status = _vbugs("status", job, "--address", job_server, env=env)
    info = json.loads(status.stdout)
    assert info["status"] == "SUCCEEDED" and info["entrypoint"] == f"vbugs audit spec.yaml --out {run_dir}"
    assert info["metadata"]["run_dir"] == str(run_dir)
    assert info["env_vars"] == ["VBUGS_FROM_FLAG"]  # the flag's env_vars replace the spec's; names only
    logs = _vbugs("logs", job, "--address", job_server, env=env)
    assert logs.returncode == 0 and "slice search:" in logs.stdout

    # submitted again with the same spec and run directory: the job resumes (nothing to generate)
    probe = _vbugs("submit", str(tmp_path / "spec.yaml"), "--address", job_server, "--out", str(run_dir),
                   env=env)
    assert probe.returncode == 0, probe.stderr[-2000:]
    again = probe.stdout.splitlines()[0]
    followed = _vbugs("logs", again, "--address", job_server, "--follow", env=env)
    assert followed.returncode == 0 and "600 images in 1 shards; 1 already done" in followed.stdout
    assert json.loads(_vbugs("status", again, "--address", job_server, env=env).stdout)["env_vars"] == \
        ["VBUGS_FROM_SPEC"]  # the spec's runtime env alone


@pytest.mark.cli
@pytest.mark.ray
def test_job_commands_answer_in_one_line(job_server, tmp_path):
    cases = [
        (("status", "nope", "--address", job_server), {"RAY_AUTH_MODE": "token"}, "job nope: "),
        (("status", "nope", "--address", job_server), {"RAY_AUTH_MODE": "disabled"}, "set RAY_AUTH_MODE=token"),
        (("logs", "nope", "--address", f"http://127.0.0.1:{_free_port()}"), {}, "no Ray job server answers there"),
        (("status", "nope"), {}, "--address: give the cluster's job server"),
        (("status", "nope", "--address", "127.0.0.1:8265"), {}, "give the dashboard's job server as http://"),
    ]
    for args, extra, expected in cases:
        done = _vbugs(*args, env=_env(**extra), timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, done.stderr[-1000:])
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\n")
    done = _vbugs("submit", str(spec), "--address", job_server, env=_env(RAY_AUTH_MODE="token"))
    assert done.returncode == 2 and done.stderr.startswith("vbugs: error: ") and len(done.stderr.splitlines()) == 1
