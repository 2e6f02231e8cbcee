"""Full size from real weight folders on the CPU (slow): random weights in the public folders' layouts, loaded
through from_pretrained by the training app, then predict and export (benchmarks/full_size_folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumollm.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/full_size_folders/run.py"), "--work",
                           str(tmp_path / "work"), "--out", str(out), *extra],
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}, capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(out.read_text())


def _check(result: dict) -> None:
    assert all(result[step]["status"] == 0 for step in ("train", "predict", "export"))
    assert result["train"]["test_films"] > 0 and len(result["train"]["step_seconds"]) == 2
    assert result["predict"]["films"] == 4 and result["predict"]["max_abs_diff_to_run_predictions"] < 5e-3
    assert result["export"]["bytes"] < 50e6


def test_the_full_size_model_loads_from_folders_trains_predicts_and_exports(tmp_path: Path) -> None:
    result = _run(tmp_path)
    _check(result)
    assert result["train"]["trainable_params"] == 2_704_000 and result["llama_shards"] > 1
    assert result["train"]["peak_anon_gib"] <= 20.0 and result["predict"]["peak_anon_gib"] <= 20.0


def test_the_same_steps_at_tiny_sizes(tmp_path: Path) -> None:
    _check(_run(tmp_path, "--tiny"))
