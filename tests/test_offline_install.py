"""Offline machines: what the suite lacks on a Python, and which wheels a machine needs (tools/wheelhouse.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from pneumollm.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("wheelhouse", REPO_ROOT / "tools" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheelhouse)


def test_this_environment_lacks_nothing_the_suite_needs() -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools/wheelhouse.py"), "missing"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == ""


def test_missing_and_too_old_requirements_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = [Requirement("no-such-package-xyz>=1"), Requirement("pytest>=999"), Requirement("pytest>=1")]
    lacking = wheelhouse.missing_here(reqs)
    assert lacking[0] == "no-such-package-xyz>=1 (not installed)"
    assert lacking[1].startswith("pytest>=999 (found ") and len(lacking) == 2


def test_the_requirements_are_the_projects_own() -> None:
    names = {r.name for r in wheelhouse.project_requirements()}
    assert {"torch", "hydra-core", "pydicom", "wandb"} <= names and "setuptools" not in names
    assert "bitsandbytes" in {r.name for r in wheelhouse.project_requirements(("quant",))}
    assert "setuptools" in {r.name for r in wheelhouse.project_requirements(build=True)}


def test_pip_freeze_is_read_with_versions(tmp_path: Path) -> None:
    (tmp_path / "have.txt").write_text("torch==2.5.1+cu121\nTransformers==4.46.0\nmypkg @ file:///x/mypkg.whl\n"
                                       "# comment\n-e git+https://x/y.git#egg=z\n")
    have = wheelhouse.read_have(tmp_path / "have.txt")
    assert have == {"torch": Version("2.5.1+cu121"), "transformers": Version("4.46.0"), "mypkg": None}
    assert "torch" in wheelhouse.read_have(None)


def _wheel(path: Path, requires: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_a_wheels_requirements_are_evaluated_for_the_target_python(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", [
        "alpha>=1", 'beta; python_version < "3.11"', 'gamma; python_version >= "3.12"', 'delta; extra == "test"',
        'eps; sys_platform == "win32"'])
    names = [r.name for r in wheelhouse.wheel_requirements(wheel, wheelhouse.target_environment("3.12"))]
    assert names == ["alpha", "gamma"]
    names = [r.name for r in wheelhouse.wheel_requirements(wheel, wheelhouse.target_environment("3.10"))]
    assert names == ["alpha", "beta"]


def test_download_fetches_only_what_the_machine_lacks_and_follows_requirements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The closure walk, with pip replaced by a fake index of three wheels."""
    index = {"hydra-core": ["omegaconf>=2.2", "packaging"], "omegaconf": ["pyyaml>=5"], "pyyaml": [],
             "captum": ["torch>=1.10", "numpy"], "packaging": [], "torch": [], "numpy": []}
    fetched: list[str] = []

    def fake_fetch(req: Requirement, dest: Path, python_version: str) -> Path:
        fetched.append(req.name)
        return _wheel(dest / f"{req.name.replace('-', '_')}-1.0-py3-none-any.whl", index[req.name])

    monkeypatch.setattr(wheelhouse, "fetch", fake_fetch)
    monkeypatch.setattr(wheelhouse, "project_requirements",
                        lambda extras=(), build=False: [Requirement("hydra-core>=1.3"), Requirement("captum"),
                                                        Requirement("torch>=2.4")])
    have = {"torch": Version("2.5.1"), "numpy": Version("1.26.4"), "packaging": Version("20.0"), "pyyaml": None}
    wheelhouse.download(tmp_path / "wh", have, "3.12", ())
    # torch and numpy are there; packaging is there (no version asked); pyyaml is there (version unknown)
    assert fetched == ["hydra-core", "captum", "omegaconf"]
    fetched.clear()
    wheelhouse.download(tmp_path / "wh2", {"torch": Version("2.3.0")}, "3.12", ())
    assert "torch" in fetched  # a version the suite refuses is fetched again


@pytest.mark.slow
def test_the_gpu_check_runs_from_src_with_a_python_that_has_the_stack(tmp_path: Path) -> None:
    """The offline path of benchmarks/gpu_check.sh: no .venv, $PYTHON with the stack, src/ on PYTHONPATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "GPU_CHECK_TINY": "1",
           "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks/gpu_check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == {"steps": 0, "compile": 0, "app": 0}


def test_the_gpu_check_names_what_is_missing_and_the_wheelhouse_command(tmp_path: Path) -> None:
    """A Python without the stack and no wheelhouse: exit 2 with the missing requirements and what to do."""
    bare = tmp_path / "bare"  # the interpreter this venv was made from, without the venv's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(bare)], check=True)
    probe = subprocess.run([str(bare / "bin" / "python"), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the base interpreter has torch installed")
    env = {**os.environ, "PYTHON": str(bare / "bin" / "python"), "WHEELHOUSE": str(tmp_path / "none")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks/gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "torch<2.15,>=2.4 (not installed)" in done.stdout and "make wheelhouse" in done.stdout
