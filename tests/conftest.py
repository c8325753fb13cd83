"""Shared fixtures: one local Ray per test session, the default toy-world spec as data."""

from __future__ import annotations

import copy

import pytest
import yaml

from vbugs_ray.spec import DEFAULT_SPEC, parse_spec


@pytest.fixture(scope="session")
def default_spec_dict() -> dict:
    return yaml.safe_load(DEFAULT_SPEC.read_text())


@pytest.fixture
def spec_dict(default_spec_dict) -> dict:
    """A mutable copy of the default spec mapping."""
    return copy.deepcopy(default_spec_dict)


@pytest.fixture(scope="session")
def default_spec(default_spec_dict):
    return parse_spec(copy.deepcopy(default_spec_dict))


@pytest.fixture(scope="session")
def ray_session():
    """Ray starts once per session with more logical CPUs than cores (2-core CI machines) and one
    logical GPU, so GPU-stage scheduling (fractional num_gpus) runs on a machine without one."""
    import ray

    ray.init(num_cpus=8, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
