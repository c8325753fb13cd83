"""Device and dtype from the spec: CPU fallback, one-line errors where CUDA is asked for and absent,
and input mistakes raised inside Ray actors still reaching the user as one line."""

import subprocess
import sys

import pytest
import torch
import yaml

from vbugs_ray.pipeline import actor_needs
from vbugs_ray.raycluster import check_resources
from vbugs_ray.cli import user_error
from vbugs_ray.roles.device import resolve_device, resolve_dtype
from vbugs_ray.errors import SpecError
from vbugs_ray.spec import RoleSpec, parse_spec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA paths")


@no_cuda
def test_auto_falls_back_to_cpu_and_half_precision_to_float32():
    role = RoleSpec(backend="timm", device="auto", dtype="float16")
    device = resolve_device("classifier", role)
    assert device == torch.device("cpu")
    assert resolve_dtype("classifier", role, device) == torch.float32
    assert resolve_dtype("classifier", RoleSpec(backend="timm", dtype="bfloat16"), device) == torch.bfloat16
    with pytest.raises(SpecError) as err:
        resolve_dtype("classifier", RoleSpec(backend="timm", device="cpu", dtype="float16"), device)
    assert err.value.field == "classifier.dtype"


@pytest.mark.cli
@no_cuda
def test_asking_for_cuda_without_one_is_a_one_line_error(tiny_models, tiny_spec_dict, tmp_path):
    with pytest.raises(SpecError) as err:
        resolve_device("generator", RoleSpec(backend="diffusers", device="cuda:1"))
    assert err.value.field == "generator.device" and "no CUDA device is visible" in str(err.value)
    tiny_spec_dict["classifier"]["device"] = "cuda"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec_dict))
    run = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", str(path), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("vbugs: error: spec field 'classifier.device': asks for cuda")
    assert "Traceback" not in run.stderr


def test_spec_checks_device_dtype_and_gpu_reservations(tiny_spec_dict):
    for role_update, field in (({"dtype": "fp8"}, "classifier.dtype"), ({"device": "tpu"}, "classifier.device")):
        spec_dict = {**tiny_spec_dict, "classifier": {**tiny_spec_dict["classifier"], **role_update}}
        with pytest.raises(SpecError) as err:
            parse_spec(spec_dict)
        assert err.value.field == field
    spec_dict = {**tiny_spec_dict, "run": {"executor": "ray"},
                 "generator": {**tiny_spec_dict["generator"], "device": "cuda", "num_gpus": 0}}
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict)
    assert err.value.field == "generator.num_gpus"
    assert parse_spec({**tiny_spec_dict, "classifier": {**tiny_spec_dict["classifier"], "dtype": "bf16"}}).classifier.dtype == "bfloat16"


def test_gpu_reservations_on_a_cluster_without_gpus(tiny_spec_dict):
    tiny_spec_dict["generator"]["num_gpus"] = 1
    spec = parse_spec(tiny_spec_dict)
    actors = actor_needs(spec)  # what each actor needs of a node, as the audit asks
    cluster = {"CPU": 8.0, "GPU": 0.0}
    with pytest.raises(SpecError) as err:  # a local Ray we started: it would wait forever
        check_resources(actors, autoscaling=False, progress=lambda _: None, largest=cluster)
    assert err.value.field == "generator.num_gpus" and "has none" in str(err.value)
    said = []
    check_resources(actors, autoscaling=True, progress=said.append, largest=cluster)  # a joined cluster may still scale up
    assert said and said[0].startswith("warning: generator.num_gpus")


def test_mistakes_raised_in_ray_actors_come_back_as_one_line():
    class ActorDied(Exception):  # what Ray raises when an actor's constructor fails: text only
        error_msg = ("The actor died because of an error raised in its creation task\n  File x.py, line 3\n"
                     "vbugs_ray.spec.SpecError: spec field 'generator.device': asks for cuda but no CUDA device")
    assert user_error(ActorDied()) == "spec field 'generator.device': asks for cuda but no CUDA device"
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = SpecError("embedder.options.pretrained", "no checkpoint file at x.pt")
    assert user_error(wrapped) == "spec field 'embedder.options.pretrained': no checkpoint file at x.pt"
    assert user_error(ValueError("a bug of ours")) is None  # real bugs keep their traceback


def test_spec_errors_survive_pickling():  # Ray ships exceptions between processes by pickle
    import pickle

    err = pickle.loads(pickle.dumps(SpecError("generator.device", "asks for cuda")))
    assert isinstance(err, SpecError) and err.field == "generator.device" and str(err).endswith("asks for cuda")
