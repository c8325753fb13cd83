"""Audits on a multi-node Ray cluster, simulated on this machine (``ray.cluster_utils.Cluster``: a
head that runs no actor and three worker nodes with a logical GPU each, every worker node with a
toy-weights cache of its own, as separate machines would have): the actors spread over the
nodes, the driver's trained weights reach them through the object store (a node never trains),
and a run whose scoring actor is killed, or whose worker node is removed, mid-run ends with a
complete, duplicate-free run store whose findings equal an undisturbed run's. (The toy generator
outruns scoring, so the scoring actors are the ones busy mid-run.)"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
import yaml

WORKERS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    caches = [root / f"node-{i}-cache" for i in range(WORKERS)]
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [head.add_node(num_cpus=2, num_gpus=1, env_vars={"VBUGS_CACHE": str(cache)}) for cache in caches]
    head.wait_for_nodes()
    try:
        yield head, nodes, caches
    finally:
        head.shutdown()


def _spec(default_spec_dict, tmp_path: Path) -> Path:
    """Two generator actors on the three GPU nodes (one node spare, for a restart), two fused
    scoring actors, shards of 300 rows."""
    spec = copy.deepcopy(default_spec_dict)
    spec.update(budget=1800, verify=False, captioner=None)
    spec["generator"].update(concurrency=2, num_gpus=1, num_cpus=0.5, batch_size=100)
    for role in ("embedder", "classifier"):
        spec[role].update(concurrency=2, num_cpus=0.25, batch_size=100)
    spec["run"] = {"executor": "ray", "shard_rows": 300}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _audit(spec: Path, run_dir: Path, address: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=address, VBUGS_RAY_CONNECT_TIMEOUT_S="60")
    return subprocess.Popen([sys.executable, "-m", "vbugs_ray.cli", "audit", str(spec), "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    """Lines of the audit's stderr up to the first one holding ``text``."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    pytest.fail(f"no line with {text!r} within {timeout}s: {''.join(seen)[-2000:]}")


def _finish(process: subprocess.Popen, before: list[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, "".join(before)[-2000:] + err[-3000:]
    return out


def _rows(run_dir: Path):
    files = sorted(str(p) for p in (run_dir / "rows").glob("shard-*/*.parquet"))
    return pads.dataset(files, format="parquet").to_table(columns=["row_id", "seed", "error", "pred"]).sort_by("row_id")


def _actor_processes(nodes, stage: str) -> list[psutil.Process]:
    """The processes of ``stage``'s actors (Ray titles them ray::MapWorker(MapBatches(Stage))...),
    under the given nodes' raylets."""
    found = []
    for node in nodes:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for child in raylet.children(recursive=True):
            try:
                if f"MapBatches({stage})" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
    return found


@pytest.fixture(scope="module")
def undisturbed(cluster, default_spec_dict, tmp_path_factory):
    head, nodes, caches = cluster
    root = tmp_path_factory.mktemp("undisturbed")
    spec = _spec(default_spec_dict, root)
    process = _audit(spec, root / "run", head.address)
    _finish(process, [])
    return spec, root / "run"


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
def test_actors_spread_over_the_nodes_and_weights_travel_by_object_store(cluster, undisturbed):
    head, nodes, caches = cluster
    spec, run_dir = undisturbed
    placed = json.loads((run_dir / "nodes.json").read_text())
    worker_ids = {n.node_id for n in nodes}
    assert len(placed["generator"]) == 2 and set(placed["generator"]) <= worker_ids  # one per GPU node
    assert len(set(placed["generator"]) | set(placed["embedder"])) >= 2
    rows = _rows(run_dir)
    assert rows.column("row_id").to_pylist() == list(range(1800))
    # each node that ran a model holds the driver's weights, written from the object store
    # (training is forbidden in actors: a node without them would have failed the run)
    used = {i for i, n in enumerate(nodes) if n.node_id in set(placed["embedder"]) | set(placed["classifier"])}
    for i in used:
        names = sorted(p.name for p in caches[i].iterdir())
        assert any(n.startswith("toy-classifier-") for n in names) and any(n.startswith("toy-clip-") for n in names)


def _kill_a_scoring_actor(head, nodes) -> None:
    victims = _actor_processes(nodes, "ScoreStage")
    assert victims, "no scoring actor found under the worker nodes' raylets"
    victims[0].send_signal(signal.SIGKILL)


def _remove_a_busy_node(head, nodes) -> None:
    busy = [n for n in nodes if _actor_processes([n], "ScoreStage")]
    assert busy, "no scoring actor found under the worker nodes' raylets"
    head.remove_node(busy[0], allow_graceful=False)


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
@pytest.mark.parametrize("disturb", [_kill_a_scoring_actor, _remove_a_busy_node],  # in this order: a node goes
                         ids=["actor-killed", "node-removed"])
def test_a_run_disturbed_mid_run_ends_complete_and_the_same(cluster, undisturbed, tmp_path, disturb):
    """Ray restarts a killed actor (on another node when its node is gone) and retries its work;
    the run store ends with every row once and the undisturbed run's findings."""
    head, nodes, _ = cluster
    spec, clean = undisturbed
    process = _audit(spec, tmp_path / "run", head.address)
    before = _wait_for(process, "shard 1/6 written")
    disturb(head, nodes)
    _finish(process, before)
    _same_run(tmp_path / "run", clean)


def _same_run(run_dir: Path, clean: Path) -> None:
    rows, reference = _rows(run_dir), _rows(clean)
    assert rows.column("row_id").to_pylist() == list(range(1800))  # complete, none twice
    assert rows.equals(reference)  # the same seeds, predictions and errors
    found = json.loads((run_dir / "report.json").read_text())["flagged_slices"]
    assert found == json.loads((clean / "report.json").read_text())["flagged_slices"]


@pytest.mark.cli
@pytest.mark.ray
@pytest.mark.trains
def test_a_driver_killed_mid_run_resumes_when_run_again(cluster, undisturbed, tmp_path):
    """SIGKILL leaves no chance to clean up: the run lock names a dead process and a shard may be
    half-written. Running the same command again takes the run over and finishes it."""
    head, _, _ = cluster
    spec, clean = undisturbed
    process = _audit(spec, tmp_path / "run", head.address)
    before = _wait_for(process, "images in 6 shards; 0 already done")
    time.sleep(4)  # the actors start and the first batches flow
    process.kill()
    process.communicate(timeout=60)
    done = sorted(p.name for p in (tmp_path / "run" / "rows").glob("shard-*"))
    assert len(done) < 6, done
    again = _audit(spec, tmp_path / "run", head.address)
    out = _finish(again, before)
    assert "flagged" in out
    _same_run(tmp_path / "run", clean)
