"""Ray connections (issue 11, items 9-12): a bad or dead address is one line within a bounded
wait; a given cluster is joined and a stale `ray_current_cluster` file ignored; an actor that
fits no node is refused before it waits forever; SIGTERM and SIGINT shut the local Ray down."""

import copy
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vbugs_ray import rayaddress
from vbugs_ray.errors import SpecError, UsageError
from vbugs_ray.raycluster import check_resources
from vbugs_ray.spec import RunSpec


def _free_port() -> int:
    """A port nothing listens on (bound and released: connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def _vbugs(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


def _one_error_line(stderr: str) -> str:
    """The single error line of a failed command; progress lines ([vbugs] ...) may precede it."""
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("vbugs: error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr[-2000:]
    return errors[0]


# --- the address: its form, where it came from, how long to wait -------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("", None), ("  ", None), ("local", None), ("10.0.0.5:6379", "10.0.0.5:6379"), ("auto", "auto"),
    ("[::1]:6379", "[::1]:6379"), ("head.example.com:6379", "head.example.com:6379")])
def test_addresses_that_are_used_as_given(value, expected, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert rayaddress.resolve(RunSpec()).text == expected


@pytest.mark.parametrize("value, says", [
    ("garbage", "not a Ray address: give host:port"),
    ("10.0.0.5", "not a Ray address"),
    ("10.0.0.5:99999", "not a Ray address"),
    ("10.0.0.5:6379/", "not a Ray address"),
    ("10.0.0.5:\u00b2", "not a Ray address"),  # a digit to str.isdigit, not to int()
    ("::1:6379", "not a Ray address"),  # IPv6 goes in brackets, as Ray reads it
    ("http://10.0.0.5:8265", "dashboard / job-submission address"),
    ("redis://10.0.0.5:6379", "not a redis:// service"),
])
def test_malformed_addresses_are_one_line(value, says, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", value)
    with pytest.raises(UsageError) as err:
        rayaddress.resolve(RunSpec())
    assert str(err.value).startswith(f"RAY_ADDRESS={value!r}: ") and says in str(err.value)
    assert str(err.value).endswith("or unset RAY_ADDRESS to start a local Ray")


def test_ray_client_without_its_extra_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else real(name, *a))
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.5:10001")
    with pytest.raises(UsageError, match=r"needs Ray Client: pip install 'ray\[client\]'"):
        rayaddress.resolve(RunSpec())


def test_the_spec_field_wins_and_its_errors_name_it(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert rayaddress.resolve(RunSpec(ray_address="10.0.0.5:6379")) == rayaddress.RayAddress("10.0.0.5:6379", True)
    with pytest.raises(SpecError) as err:
        rayaddress.resolve(RunSpec(ray_address="nonsense"))
    assert err.value.field == "run.ray_address" and "not a Ray address" in str(err.value)
    # the spec's error lines are cut at a length; these must fit whole
    for value in ("nonsense", "http://10.0.0.5:8265", "redis://h:1"):
        with pytest.raises(SpecError) as err:
            rayaddress.resolve(RunSpec(ray_address=value))
        assert err.value.message.endswith("auto or local"), err.value.message
    with pytest.raises(SpecError) as err:
        rayaddress.wait_until_reachable(rayaddress.RayAddress(f"127.0.0.1:{_free_port()}", True), 0.2, print)
    assert err.value.message.endswith("(run.ray_connect_timeout_s)"), err.value.message


def test_the_wait_comes_from_the_spec_else_the_environment_else_30s(monkeypatch):
    monkeypatch.delenv(rayaddress.TIMEOUT_ENV, raising=False)
    assert rayaddress.connect_timeout(RunSpec()) == 30.0
    monkeypatch.setenv(rayaddress.TIMEOUT_ENV, "7.5")
    assert rayaddress.connect_timeout(RunSpec()) == 7.5
    assert rayaddress.connect_timeout(RunSpec(ray_connect_timeout_s=2.0)) == 2.0
    for bad in ("soon", "0", "-3", "nan", "inf", "1e300"):
        monkeypatch.setenv(rayaddress.TIMEOUT_ENV, bad)
        with pytest.raises(UsageError, match=rf"^{rayaddress.TIMEOUT_ENV}='{bad}': must be a number of seconds > 0"):
            rayaddress.connect_timeout(RunSpec())
    assert rayaddress.join_deadline(1.0) == 10.0 and rayaddress.join_deadline(30.0) == 60.0


def test_a_dead_address_fails_within_the_wait_naming_it():
    port = _free_port()
    address = rayaddress.RayAddress(f"127.0.0.1:{port}")
    said = []
    t0 = time.monotonic()
    with pytest.raises(UsageError) as err:
        rayaddress.wait_until_reachable(address, 1.5, said.append)
    assert 1.5 <= time.monotonic() - t0 < 10
    assert f"nothing answers at 127.0.0.1:{port} after 1.5s (Connection refused)" in str(err.value)
    assert f"({rayaddress.TIMEOUT_ENV})" in str(err.value)
    assert said == [f"waiting up to 1.5s for Ray at 127.0.0.1:{port} (RAY_ADDRESS) (Connection refused)"]
    with pytest.raises(UsageError, match="cannot resolve host 'no-such-host.invalid'"):
        rayaddress.wait_until_reachable(rayaddress.RayAddress("no-such-host.invalid:6379"), 30, said.append)


def test_a_listening_address_is_reachable_at_once():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = rayaddress.RayAddress(f"127.0.0.1:{server.getsockname()[1]}")
        rayaddress.wait_until_reachable(address, 1.0, lambda line: pytest.fail(f"waited: {line}"))


def test_auto_names_the_cluster_ray_would_pick_with_ray_address_set_aside(monkeypatch):
    from ray._private import services

    seen = {}

    def pick(address):
        seen["RAY_ADDRESS"] = os.environ.get("RAY_ADDRESS")
        return "192.0.2.7:6379"

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", pick)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    found = rayaddress.latest_cluster(rayaddress.RayAddress("auto", from_spec=True))
    assert found.text == "192.0.2.7:6379" and found.given == "auto" and seen["RAY_ADDRESS"] is None
    assert os.environ["RAY_ADDRESS"] == "10.0.0.9:6379"  # put back
    assert str(found) == "192.0.2.7:6379 (run.ray_address=auto)"

    def none(address):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", none)
    with pytest.raises(SpecError, match="no Ray cluster to join on this machine .Could not find any running Ray"):
        rayaddress.latest_cluster(rayaddress.RayAddress("auto", from_spec=True))
    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", lambda a: "http://x:1")
    with pytest.raises(SpecError, match="which is not host:port"):
        rayaddress.latest_cluster(rayaddress.RayAddress("auto", from_spec=True))


def test_auto_joins_as_rays_own_auto_so_a_token_cluster_is_joined(monkeypatch):
    """Ray joins with this machine's token (a head `ray start` made uses token authentication)
    only for the address 'auto' with RAY_ADDRESS unset, never for an explicit host:port: so the
    cluster 'auto' found is joined as 'auto', RAY_ADDRESS set aside, and put back after. An
    explicit address is passed as it is."""
    import ray

    from vbugs_ray import raycluster

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(rayaddress, "latest_cluster",
                        lambda a: rayaddress.RayAddress("192.0.2.7:6379", a.from_spec, given=a.text))
    monkeypatch.setattr(rayaddress, "wait_until_reachable", lambda *a, **k: None)
    monkeypatch.setattr(raycluster, "_ray_init", lambda **kw: calls.append((kw["address"], os.environ.get("RAY_ADDRESS"))))
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert raycluster.start_ray(RunSpec(), lambda line: None) == "joined"
    assert calls == [("auto", None)] and os.environ["RAY_ADDRESS"] == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.8:6379")
    raycluster.start_ray(RunSpec(), lambda line: None)
    assert calls[1] == ("192.0.2.8:6379", "192.0.2.8:6379")


def test_a_stale_ray_current_cluster_behind_auto_is_a_dead_address(monkeypatch):
    """What Ray's 'auto' finds in an old ray_current_cluster file is waited for like any
    address, and named (no other cluster running: Ray's fallback to one it finds is cut off)."""
    from ray._private import services

    port = _free_port()
    monkeypatch.setenv("RAY_TMPDIR", _stale_tmpdir(port))
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    found = rayaddress.latest_cluster(rayaddress.RayAddress("auto"))
    assert found.text.endswith(f":{port}")
    with pytest.raises(UsageError, match=rf"^RAY_ADDRESS='auto': nothing answers at .*:{port} after 0.3s"):
        rayaddress.wait_until_reachable(found, 0.3, print)


# --- resources: an actor must fit on some node ------------------------------------------------------------------

def test_an_actor_that_fits_no_node_is_refused_locally_and_awaited_on_a_joined_cluster():
    node = {"CPU": 8.0, "GPU": 1.0}
    check_resources({"generator": {"CPU": 8.0, "GPU": 1.0}}, autoscaling=False, progress=print, largest=node)
    with pytest.raises(SpecError) as err:
        check_resources({"generator": {"CPU": 1000.0, "GPU": 0.0}}, autoscaling=False, progress=print, largest=node)
    assert err.value.field == "generator.num_cpus"
    assert "asks for 1000 CPUs per actor but the largest Ray node has 8" in str(err.value)
    assert "run.ray_num_cpus" in str(err.value)
    with pytest.raises(SpecError) as err:  # two GPUs per actor on one-GPU nodes
        check_resources({"classifier": {"CPU": 0.25, "GPU": 2.0}}, autoscaling=False, progress=print, largest=node)
    assert err.value.field == "classifier.num_gpus" and "largest Ray node has 1" in str(err.value)
    with pytest.raises(SpecError) as err:  # a fused scoring actor reserves both roles' CPUs
        check_resources({"embedder+classifier": {"CPU": 9.0}}, autoscaling=False, progress=print, largest=node)
    assert err.value.field == "embedder.num_cpus" and "embedder and classifier share one actor" in str(err.value)
    said = []
    check_resources({"generator": {"CPU": 1000.0}}, autoscaling=True, progress=said.append, largest=node)
    assert said == ["warning: generator.num_cpus asks for 1000 CPUs per actor but the largest Ray node has 8; "
                    "lower it (fractions are allowed); waiting for the autoscaler to add a node that fits"]
    # pinning to a node type: a custom resource or an accelerator type no node has
    with pytest.raises(SpecError) as err:
        check_resources({"generator": {"CPU": 1.0, "big_gpu_node": 0.01}}, autoscaling=False, progress=print,
                        largest=node)
    assert err.value.field == "generator.resources" and "'big_gpu_node'" in str(err.value)
    with pytest.raises(SpecError) as err:
        check_resources({"classifier": {"GPU": 1.0, "accelerator_type:A100": 0.001}}, autoscaling=False,
                        progress=print, largest={**node, "accelerator_type:L4": 1.0})
    assert err.value.field == "classifier.accelerator_type" and "'A100'" in str(err.value) and "L4" in str(err.value)
    check_resources({"classifier": {"GPU": 1.0, "accelerator_type:L4": 0.001}}, autoscaling=False, progress=print,
                    largest={**node, "accelerator_type:L4": 1.0})


# --- the command as a whole process ------------------------------------------------------------------------------

def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_run(default_spec_dict, tmp_path_factory) -> tuple[Path, Path]:
    """(spec file asking for Ray, run dir) of one small finished audit, made without Ray."""
    folder = tmp_path_factory.mktemp("small-run")
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=48, verify=False)
    spec["run"] = {"executor": "local", "shard_rows": 16}
    spec["search"]["min_support"] = 4
    (folder / "local.yaml").write_text(yaml.safe_dump(spec))
    done = _vbugs("audit", str(folder / "local.yaml"), "--out", str(folder / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    spec["run"]["executor"] = "ray"
    (folder / "ray.yaml").write_text(yaml.safe_dump(spec))
    return folder / "ray.yaml", folder / "run"


def _stale_tmpdir(port: int) -> str:
    """A Ray temp dir whose ray_current_cluster names a cluster long gone (short: Ray's socket
    paths must fit in 107 characters)."""
    tmp = tempfile.mkdtemp(prefix="vbr", dir="/tmp")
    (Path(tmp) / "ray").mkdir()
    (Path(tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    return tmp


@pytest.mark.cli
@pytest.mark.trains
@pytest.mark.parametrize("case", ["dead", "garbage", "client", "dashboard", "unknown host", "no Ray"])
def test_a_bad_ray_address_is_one_line_and_leaves_the_run_as_it_was(case, small_run, tmp_path):
    spec, run = small_run
    port = _free_port()
    silent = socket.socket()  # accepts connections (the kernel completes them) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    address, extra, says = {
        "dead": (f"127.0.0.1:{port}", {}, f"nothing answers at 127.0.0.1:{port} after 1s"),
        "garbage": ("garbage", {}, "not a Ray address"),
        "client": (f"ray://127.0.0.1:{port}", {}, "ray[client]"),
        "dashboard": (f"http://127.0.0.1:{port}", {}, "job-submission address"),
        "unknown host": ("no-such-host.invalid:6379", {}, "cannot resolve host"),
        "no Ray": (f"127.0.0.1:{silent.getsockname()[1]}", {}, "did not finish joining the cluster there within 10s"),
    }[case]
    if case == "client" and __import__("importlib.util").util.find_spec("grpc") is not None:
        pytest.skip("ray[client] is installed here")
    before = _tree(run)
    env = _env(RAY_ADDRESS=address, VBUGS_RAY_CONNECT_TIMEOUT_S="1", **extra)
    first_start = case in ("dead", "no Ray")  # and a first start leaves no folder
    for out in [run, *([tmp_path / "new"] if first_start else [])]:
        done = _vbugs("audit", str(spec), "--out", str(out), env=env, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        line = _one_error_line(done.stderr)
        assert line.startswith(f"vbugs: error: RAY_ADDRESS={address!r}: ") and says in line, line
    silent.close()
    assert _tree(run) == before and not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def million_row_table(tmp_path_factory) -> Path:
    """1.2 million rows in two files of 200,000-row groups: past one shard, so the search counts
    on Ray (the case `ray job submit` broke)."""
    rng = np.random.default_rng(5)
    n = 1_200_000
    a, b = rng.integers(0, 4, n), rng.integers(0, 3, n)
    error = np.where((a == 1) & (b == 2), rng.random(n) < 0.3, rng.random(n) < 0.05)
    table = pa.table({"a": a.astype(str), "b": b.astype(str), "error": error})
    root = tmp_path_factory.mktemp("million")
    for i in range(2):
        pq.write_table(table.slice(i * 600_000, 600_000), root / f"part-{i}.parquet", row_group_size=200_000)
    return root


def _search(table: Path, out: Path, env: dict):
    done = _vbugs("slices", "--table", str(table), "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["n_images"] == 1_200_000 and report["flagged_slices"][0]["predicates"] == {"a": "1", "b": "2"}
    return done.stderr


@pytest.mark.cli
@pytest.mark.ray
def test_the_cluster_given_by_ray_address_is_joined(million_row_table, tmp_path):
    """What `ray job submit` does: RAY_ADDRESS names a running cluster, and the search joins it."""
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="vbr", dir="/tmp")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false"],
                            env=_env(RAY_TMPDIR=tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        said = _search(million_row_table, tmp_path / "joined.json",
                       _env(RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="token",
                            VBUGS_RAY_CONNECT_TIMEOUT_S="60"))  # the head may still be starting
        assert f"joining the Ray cluster at 127.0.0.1:{port} (RAY_ADDRESS)" in said
        assert "starting a local Ray" not in said
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        head.wait(timeout=60)


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
def test_gpu_roles_on_a_joined_cluster_without_gpus_wait_with_a_warning(small_run, tmp_path):
    """An autoscaled cluster whose GPU group is at zero nodes: the audit joins it, says it waits
    for the autoscaler (it does not fail), and a SIGTERM cancels it cleanly."""
    spec, _ = small_run
    data = yaml.safe_load(spec.read_text())
    data["generator"]["num_gpus"] = 1
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(data))
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="vbr", dir="/tmp")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=4", "--num-gpus=0", "--include-dashboard=false"],
                            env=_env(RAY_TMPDIR=tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        audit = subprocess.Popen([sys.executable, "-m", "vbugs_ray.cli", "audit", str(tmp_path / "gpu.yaml"),
                                  "--out", str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, env=_env(RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="token",
                                                     VBUGS_RAY_CONNECT_TIMEOUT_S="60"))
        said, deadline = [], time.time() + 120
        while time.time() < deadline:
            line = audit.stderr.readline()
            said.append(line)
            if not line or "waiting for the autoscaler" in line:
                break
        assert said[-1].startswith("[vbugs] warning: generator.num_gpus asks for 1 GPU per actor but the Ray "
                                   "cluster has none"), "".join(said)[-2000:]
        time.sleep(3)
        assert audit.poll() is None  # waiting, not failed
        audit.send_signal(signal.SIGTERM)
        rest = audit.communicate(timeout=60)[1]
        assert audit.returncode == 143, rest[-2000:]
        assert "terminated; finished shards are kept" in rest
    finally:
        head.terminate()
        head.wait(timeout=60)


@pytest.mark.cli
@pytest.mark.ray
def test_a_stale_ray_current_cluster_file_is_ignored(million_row_table, tmp_path):
    said = _search(million_row_table, tmp_path / "local.json", _env(RAY_TMPDIR=_stale_tmpdir(_free_port())))
    assert "starting a local Ray" in said


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
def test_an_actor_larger_than_any_node_is_refused_before_the_run(small_run, tmp_path):
    spec, _ = small_run
    data = yaml.safe_load(spec.read_text())
    data["generator"]["num_cpus"] = 1000
    data["run"]["ray_num_cpus"] = 8
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(data))
    done = _vbugs("audit", str(tmp_path / "big.yaml"), "--out", str(tmp_path / "run"), timeout=120)
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == (
        "vbugs: error: spec field 'generator.num_cpus': asks for 1000 CPUs per actor but the largest Ray node "
        "has 8; lower it (fractions are allowed) or raise run.ray_num_cpus")
    assert not (tmp_path / "run").exists()


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
@pytest.mark.parametrize("signum, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_shuts_the_local_ray_down(signum, status, word, default_spec_dict, tmp_path):
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=3000, verify=False)
    spec["run"]["shard_rows"] = 256
    spec["generator"]["batch_size"] = 64
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    audit = subprocess.Popen([sys.executable, "-m", "vbugs_ray.cli", "audit", str(tmp_path / "spec.yaml"),
                              "--out", str(tmp_path / "run")], stderr=subprocess.PIPE, text=True, env=_env())
    try:
        for line in audit.stderr:
            if line.startswith("[vbugs] shard 1/"):
                break
        ray_processes = psutil.Process(audit.pid).children(recursive=True)
        assert any(p.name() == "raylet" for p in ray_processes)
        audit.send_signal(signum)
        rest = audit.stderr.read()
        assert audit.wait(timeout=60) == status
    finally:
        audit.kill()
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == f"vbugs: {word}; finished shards are kept, re-run the same command to resume"
    _, alive = psutil.wait_procs(ray_processes, timeout=20)
    assert not alive, sorted(p.name() for p in alive)


def test_sigterm_handling_is_put_back_and_survives_ray_init(monkeypatch):
    import ray

    from vbugs_ray import cli, raycluster, signals

    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["validate", "jobs/toyworld.yaml"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI puts back what it found
    signals.install()
    try:
        def ray_init_interrupted(**kwargs):  # what ray.init does on SIGTERM: its own handler, sys.exit(15)
            signal.signal(signal.SIGTERM, lambda *a: None)
            raise SystemExit(signal.SIGTERM)

        monkeypatch.setattr(ray, "init", ray_init_interrupted)
        with pytest.raises(signals.Terminated):
            raycluster._ray_init(address="local")
        assert signals.installed()  # ours again, not Ray's
        with pytest.raises(signals.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second SIGTERM waits for the clean-up
    finally:
        signals.restore(before)
    assert signal.getsignal(signal.SIGTERM) is before and not signals.was_installed()
