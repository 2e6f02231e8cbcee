"""The full-size training-step benchmark runs end to end on CPU with the tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.helpers import REPO_ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_step_full", REPO_ROOT / "benchmarks" / "train_step_full.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_runs_one_step_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = load_benchmark().main(["--tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
                                    "--batch-size", "2", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == result
    assert len(result["step_seconds"]) == 1 and result["mean_step_seconds"] > 0
    assert result["choices"]["encoder"] == "tiny_clip_vit_l14" and result["trainable_parameters"] > 0
    assert result["max_memory_allocated_bytes"] is None  # only measured on CUDA
