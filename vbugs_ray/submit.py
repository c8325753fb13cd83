"""`vbugs submit`, `status`, `logs`, `stop`: an audit as a Ray job, through Ray's own
``JobSubmissionClient`` (the dashboard's job server, http://HEAD:8265).

The job's working directory holds the spec (so the head needs nothing of the submitter's files),
its entrypoint is ``vbugs audit SPEC --out RUN_DIR``, and its runtime env comes from the spec's
``run.runtime_env``, overridden key by key by ``--runtime-env``. The spec is read and checked here
before anything is sent: a mistake is one line on the submitter's terminal, not a failed job.
Plain ``ray job submit --working-dir . -- vbugs audit jobs/X.yaml`` works as well.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from vbugs_ray.errors import UsageError, cut, one_line
from vbugs_ray.spec import load_spec
from vbugs_ray.terminal import verbose

Progress = Callable[[str], None]
AGENT_WAIT_S = 60.0  # a head just started answers before its job agent runs: retry that long
AGENT_RETRY_S = 2.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def job_server(address: str | None) -> str:
    """The job server's URL: ``--address``, else RAY_API_SERVER_ADDRESS, else an http(s)
    RAY_ADDRESS (what `ray job` reads too)."""
    for value, where in ((address, "--address"), (os.environ.get("RAY_API_SERVER_ADDRESS"), "RAY_API_SERVER_ADDRESS"),
                         (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if value:
            if not value.startswith(("http://", "https://")):
                if where == "RAY_ADDRESS":
                    continue  # a GCS address (HOST:6379) is for joining, not for the job server
                raise UsageError(f"{where} {value!r}: give the dashboard's job server as http://HEAD:8265")
            return value.rstrip("/")
    raise UsageError("--address: give the cluster's job server, e.g. --address http://HEAD:8265 "
                     "(or set RAY_API_SERVER_ADDRESS)")


def client(address: str | None):
    """A connected JobSubmissionClient, or one line saying why there is none."""
    url = job_server(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise UsageError(f"vbugs submit needs Ray's job client ({exc}); pip install 'ray[default]'") from None
    if not verbose():  # the client's INFO lines (a package uploaded, a websocket closed) are its own business
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its AuthenticationError
        raise UsageError(_why(url, exc)) from None


def _why(url: str, exc: Exception) -> str:
    text = one_line(str(exc))
    if "authentication" in text.lower() or "unauthorized" in text.lower():
        return (f"--address {url}: the cluster wants its token: set RAY_AUTH_MODE=token and put the cluster's "
                "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)")
    return f"--address {url}: no Ray job server answers there ({cut(text, 100)}); is the dashboard running?"


def _runtime_env(spec_env: dict | None, path: str | None) -> dict:
    """The spec's ``run.runtime_env`` with ``--runtime-env FILE`` (YAML or JSON) laid over it."""
    env = dict(spec_env or {})
    if path:
        import yaml

        try:
            given = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"--runtime-env {path}: cannot be read ({cut(one_line(str(exc)), 100)})") from None
        if not isinstance(given, dict):
            raise UsageError(f"--runtime-env {path}: must hold a mapping (pip, env_vars, working_dir...)")
        env.update(given)
    return env


def submit(spec_path: str, address: str | None, out: str | None, runtime_env: str | None = None,
           entrypoint_num_cpus: float = 0.0, entrypoint_num_gpus: float = 0.0, submission_id: str | None = None,
           progress: Progress = lambda _: None) -> str:
    """Submit ``vbugs audit`` of the spec as a Ray job; returns its submission id."""
    spec = load_spec(spec_path)
    run_dir = out or spec.output_dir
    if not Path(run_dir).is_absolute():
        progress(f"the run directory {run_dir} is relative: it lands in the job's working directory on the head "
                 "node and goes with it; give --out a folder on storage every node reaches")
    env = _runtime_env(spec.run.runtime_env, runtime_env)
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="vbugs-submit-") as folder:
        if "working_dir" in env:  # the user's own project goes up; the spec must be inside it
            if "://" in str(env["working_dir"]):
                raise UsageError(f"--runtime-env working_dir {env['working_dir']}: vbugs submit uploads the spec "
                                 "with a local working_dir; for a remote one, use `ray job submit` with a spec "
                                 "inside it")
            name = os.path.relpath(spec_path, env["working_dir"])
            if name.startswith(".."):
                raise UsageError(f"--runtime-env working_dir {env['working_dir']}: the spec {spec_path} must be "
                                 "inside it (it is the job's only copy of your files)")
        else:
            name = Path(spec_path).name
            shutil.copy(spec_path, Path(folder) / name)
            env["working_dir"] = folder
        entrypoint = f"vbugs audit {shlex.quote(name)} --out {shlex.quote(run_dir)}"
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return jobs.submit_job(entrypoint=entrypoint, runtime_env=env, submission_id=submission_id,
                                       entrypoint_num_cpus=entrypoint_num_cpus or None,
                                       entrypoint_num_gpus=entrypoint_num_gpus or None,
                                       metadata={"vbugs_spec": spec.name, "run_dir": run_dir})
            except Exception as exc:  # noqa: BLE001 - the job server's refusal, as one line
                text = one_line(str(exc))
                if "No available agent" in text and time.monotonic() < deadline:
                    # a head that just started: its job agent comes up after the dashboard answers
                    progress("the cluster's job agent is not up yet; trying again")
                    time.sleep(AGENT_RETRY_S)
                    continue
                raise UsageError(f"the job server refused the job: {cut(text, 160)}") from None


def _job(jobs, submission_id: str):
    try:
        return jobs.get_job_info(submission_id)
    except Exception as exc:  # noqa: BLE001 - an unknown id is a RuntimeError with the server's text
        raise UsageError(f"job {submission_id}: {cut(one_line(str(exc)), 120)}") from None


def status(submission_id: str, address: str | None) -> dict:
    info = _job(client(address), submission_id)
    return {"submission_id": submission_id, "status": str(info.status), "message": info.message,
            "entrypoint": info.entrypoint, "metadata": info.metadata,
            "env_vars": sorted((info.runtime_env or {}).get("env_vars", {}))}  # names only: values may be secrets


def stop(submission_id: str, address: str | None) -> bool:
    jobs = client(address)
    _job(jobs, submission_id)
    return jobs.stop_job(submission_id)


def logs(submission_id: str, address: str | None, follow: bool = False, out=None) -> str:
    """Print the job's logs (``follow``: as they come, until the job ends); returns its status."""
    out = out or sys.stdout
    jobs = client(address)
    _job(jobs, submission_id)
    if not follow:
        out.write(jobs.get_job_logs(submission_id))
    else:
        async def tail() -> None:
            async for chunk in jobs.tail_job_logs(submission_id):
                out.write(chunk)
                out.flush()

        asyncio.run(tail())
    return str(jobs.get_job_status(submission_id))
