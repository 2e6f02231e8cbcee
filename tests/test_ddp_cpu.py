"""DDP on the CPU (two gloo processes): training is shared, testing covers the whole test set exactly once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import subprocess_env
from tests.test_training import TOY


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    # 23 patients: a test fold whose size does not divide by two processes (padding would show)
    return toy_cohort(n_patients=23, films_per_patient=1, size=40)


def test_ddp_on_two_cpu_processes_tests_every_film_once_and_writes_once(manifest: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = [o for o in TOY if not o.startswith("trainer=")]
    command = [sys.executable, "-m", "pneumollm.cli.train", *overrides, "trainer=ddp_cpu",
               f"data.source.manifest={manifest}", f"paths.root_dir={tmp_path}", "trainer.max_epochs=2",
               "data.eval_batch_size=3", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with (run_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    test_films = metrics["splits"]["test"]["films"]
    assert len(rows) == test_films and len({r["image_id"] for r in rows}) == test_films
    correct = sum((float(r["prob"]) > 0.5) == (r["label"] == "1") for r in rows)
    assert metrics["test/accuracy"] == pytest.approx(100.0 * correct / test_films, abs=1e-3)
    assert result.stderr.count(f"-> {run_dir}") + result.stdout.count(f"-> {run_dir}") <= 1
