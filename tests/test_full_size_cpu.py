"""The full-size path on the CPU (slow): the paper's architecture through the real training app, killed and
resumed, within the memory this machine has; and the GPU check script's dry run with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumollm.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_the_training_app_runs_the_full_size_model_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/full_size_cpu/run.py"), "--work",
                           str(tmp_path / "work"), "--out", str(out)], env=_env(), capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert result["resumed"] and result["epochs_run"] == 2 and result["steps_by_epoch"] == [0, 0, 1, 1]
    assert result["trainable_params"] == 2_704_000 and result["total_params"] > 6.7e9
    assert result["predictions"] == result["test_films"] > 0 and result["features_written"]
    assert result["aggregation_status"] == 0
    assert max(result["peak_rss_gib"], result["killed_run_peak_rss_gib"]) <= 20.0
    assert result["checkpoint_bytes"] < 50e6  # trainable weights and their optimiser state only, not 13 GB


def test_the_gpu_check_script_runs_with_tiny_models_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks/gpu_check.sh"), str(tmp_path)],
                          env={**_env(), "GPU_CHECK_TINY": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == {"steps": 0, "compile": 0, "app": 0}
    for variant in ("bf16", "grad_ckpt", "compile", "nf4", "int8"):
        assert summary[variant]["status"] == "ok", summary[variant]
        assert summary[variant]["mean_step_seconds"] > 0
    assert summary["app"]["epochs_run"] == 1 and len(summary["app"]["step_seconds"]) == 2
