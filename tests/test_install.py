"""The package installs outside the checkout: a wheel built from it, installed into a fresh venv,
gives a `vbugs` command that finds the default spec (package data) from any folder."""

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cli
def test_a_wheel_installed_into_a_fresh_venv_runs_from_anywhere(tmp_path):
    # built from a copy of what a release holds, so no build/ folder of an earlier build leaks in
    source = tmp_path / "source"
    shutil.copytree(ROOT / "vbugs_ray", source / "vbugs_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("vbugs_ray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vbugs_ray/specs/toyworld.yaml" in names and "vbugs_ray/py.typed" in names
    assert {f"vbugs_ray/webreport/templates/{name}" for name in ("report.html.j2", "report.css", "sort.js")} <= set(names)
    assert not any(name.startswith(("tests/", "benchmarks/", "jobs/")) for name in names)

    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # the dependencies (torch, Ray, ...) come from this environment; the package itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(fresh / "bin" / "vbugs"), "validate"], capture_output=True, text=True, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"name": "toyworld-demo", "cells": 720, "rows": 7200}
    where = subprocess.check_output([str(python), "-c", "import vbugs_ray, pathlib; print(pathlib.Path(vbugs_ray.__file__).parent)"],
                                    text=True, cwd=elsewhere).strip()
    assert Path(where).is_relative_to(fresh), where  # the installed copy, not the checkout
