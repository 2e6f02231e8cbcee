"""The suite as a wheel: configs and sweep files travel inside the package, so an installed copy composes the
training app's config and every paper sweep without the checkout; LICENSE matches pyproject."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

from pneumollm.paths import REPO_ROOT

CHECK = r"""
import sys
import pneumollm
from hydra import compose, initialize_config_dir
from pneumollm.config import register_resolvers
from pneumollm.paths import conf_dir, experiments_dir
register_resolvers()
assert pneumollm.__file__.startswith(sys.argv[1]), pneumollm.__file__
with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
    cfg = compose("train", overrides=["arm=adapter_cmte"])
print("train", cfg.experiment.arm, cfg.model._target_)
for sweep in sorted(p.stem for p in experiments_dir().glob("*.yaml")):
    with initialize_config_dir(version_base="1.3", config_dir=str(experiments_dir())):
        cfg = compose(sweep, overrides=[f"hydra.searchpath=[file://{conf_dir()}]"], return_hydra_config=True)
    print("sweep", sweep, cfg.experiment.name)
"""


def test_a_wheel_carries_the_configs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(REPO_ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("pneumollm-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("PNEUMOLLM_CONF", None)
    env.pop("PNEUMOLLM_EXPERIMENTS", None)
    done = subprocess.run([sys.executable, "-c", CHECK, str(site)], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "train adapter_cmte pneumollm.models.pneumollm.PneumoLLM"
    sweeps = {line.split()[1] for line in lines[1:]}
    assert sweeps == {"demo", "table2", "table3", "table4", "table5", "table6", "fig6a", "fig6b", "backbones"}


def test_the_license_file_matches_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")
