"""cluster/: the launcher configs pass Ray's own schema (ray/autoscaler/ray-schema.json, the one
`ray up` checks) and say what the README promises: a CPU head that runs drivers only, autoscaled
GPU workers with a spot/preemptible variant, the package installed on every node, the dashboard
bound to the head. The KubeRay manifests carry the fields KubeRay needs and keep the dashboard
off any public load balancer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_configs_pass_rays_schema_and_keep_their_promises(name):
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(config)  # raises jsonschema.ValidationError naming the field
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--dashboard-host=127.0.0.1" in start
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert len(workers) >= 2 and all(v["min_workers"] == 0 < v["max_workers"] for v in workers.values())
    configs = [yaml.safe_dump(v["node_config"]) for v in workers.values()]
    assert any("spot" in c or "preemptible: true" in c for c in configs)  # a cheaper, reclaimable variant
    assert any("vbugs_ray" in command for command in config["setup_commands"])


def test_a_launcher_config_with_a_mistake_is_refused_by_the_schema():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config["available_node_types"]["head"]["min_worker"] = 1  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_kuberay_manifests_have_the_fields_kuberay_needs(name):
    manifest = yaml.safe_load((CLUSTER / name).read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] in ("RayCluster", "RayJob")
    assert manifest["metadata"]["name"]
    spec = _cluster_spec(manifest)
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["groupName"] and 0 == g["minReplicas"] < g["maxReplicas"] for g in groups)
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]["nvidia.com/gpu"]
        assert "rayStartParams" in group
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("vbugs audit ")
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True  # the cluster goes when the audit ends
