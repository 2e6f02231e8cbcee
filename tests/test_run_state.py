"""A run folder belongs to one config: no resuming another config's checkpoint, no stale results counted,
hashes that follow the cohort's content rather than its location, the last epoch saved every epoch, one
process per job, and a killed run that resumes to the same result bit for bit."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from pneumollm.analysis.collect import check_complete, collect_runs
from pneumollm.training.run import JobLockedError, run_fold
from pneumollm.training.run_folder import RunFolder
from tests.helpers import compose_train, crash_at_epoch, subprocess_env
from tests.test_training import TOY


@pytest.fixture(scope="module")
def manifest(toy_cohort) -> Path:
    return toy_cohort(n_patients=18, films_per_patient=2, size=40)


def _cfg(manifest: Path, root: Path, *extra: str, run_dir: Path | None = None):
    return compose_train([*TOY, f"data.source.manifest={manifest}", f"paths.root_dir={root}",
                          "trainer.max_epochs=3", *extra], run_dir=run_dir or root / "run")


def _predictions(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_checkpoint_of_another_config_is_set_aside_not_resumed(manifest: Path, tmp_path: Path) -> None:
    fresh = run_fold(_cfg(manifest, tmp_path / "fresh", "seed=3"))
    shared = tmp_path / "shared"
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, shared))  # config A leaves last.ckpt behind
    assert (shared / "run/checkpoints/last.ckpt").is_file()
    other = run_fold(_cfg(manifest, shared, "seed=3"))  # config B in the same folder must start from scratch
    assert _predictions(shared / "run") == _predictions(tmp_path / "fresh/run")
    assert other["test/auc"] == fresh["test/auc"] and other["epochs_run"] == fresh["epochs_run"]
    superseded = list((shared / "run/.superseded").rglob("last.ckpt"))
    assert len(superseded) == 1  # nothing deleted: the foreign checkpoint is kept aside


def test_a_checkpoint_of_the_same_config_is_resumed(manifest: Path, tmp_path: Path, capfd) -> None:
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, tmp_path))
    run_fold(_cfg(manifest, tmp_path))
    assert "resuming from" in capfd.readouterr().err
    assert not (tmp_path / "run/.superseded").exists()


def test_last_ckpt_is_the_last_epoch_and_selection_last_tests_it(manifest: Path, tmp_path: Path) -> None:
    # monitoring the epoch number in "min" mode makes epoch 0 the best forever: Lightning's own last.ckpt
    # would then stay at epoch 0
    metrics = run_fold(_cfg(manifest, tmp_path, "selection=last", "callbacks.checkpoint.monitor=epoch",
                            "callbacks.checkpoint.mode=min", "trainer.max_epochs=3"))
    assert metrics["checkpoint"] == "checkpoints/last.ckpt"
    last = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "run/checkpoints/best.ckpt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] == 0


def test_a_killed_run_keeps_the_last_epoch_to_resume_from(manifest: Path, tmp_path: Path) -> None:
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, tmp_path, "callbacks.checkpoint.monitor=epoch", "callbacks.checkpoint.mode=min"))
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1


def test_a_copied_results_folder_keeps_its_hash_and_is_not_retrained(manifest: Path, tmp_path: Path) -> None:
    first = run_fold(_cfg(manifest, tmp_path / "a", "trainer.max_epochs=1"))
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    stamp = (tmp_path / "copy/run/metrics.json").stat().st_mtime_ns
    again = run_fold(_cfg(manifest, tmp_path / "copy", "trainer.max_epochs=1"))
    assert (tmp_path / "copy/run/metrics.json").stat().st_mtime_ns == stamp
    assert again["config_hash"] == first["config_hash"]


def test_a_moved_cohort_keeps_the_hash(manifest: Path, tmp_path: Path) -> None:
    shutil.copytree(manifest.parent, tmp_path / "moved")
    first = run_fold(_cfg(manifest, tmp_path / "a", "trainer.max_epochs=1"))
    moved = run_fold(_cfg(tmp_path / "moved" / manifest.name, tmp_path / "b", "trainer.max_epochs=1"))
    assert moved["config_hash"] == first["config_hash"]


def test_a_relabelled_film_changes_the_hash_and_reruns_the_job(manifest: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(manifest.parent, cohort)
    edited = cohort / manifest.name
    first = run_fold(_cfg(edited, tmp_path, "trainer.max_epochs=1"))
    rows = edited.read_text().splitlines()
    rows[2] = rows[2].replace("normal", "pneumoconiosis") if "normal" in rows[2] else rows[2].replace(
        "pneumoconiosis", "normal")
    edited.write_text("\n".join(rows) + "\n")
    second = run_fold(_cfg(edited, tmp_path, "trainer.max_epochs=1"))
    assert second["config_hash"] != first["config_hash"]
    assert second["cohort"]["films"] != first["cohort"]["films"]


def test_stale_results_of_an_interrupted_rerun_are_not_aggregated(manifest: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "study/arm/fold0"
    run_fold(_cfg(manifest, tmp_path, "trainer.max_epochs=1", run_dir=run_dir))
    assert check_complete(collect_runs(tmp_path / "study")["timm_resnet18"], num_folds=1) == []
    with crash_at_epoch(2), pytest.raises(RuntimeError, match="simulated interruption"):
        run_fold(_cfg(manifest, tmp_path, "seed=4", run_dir=run_dir))  # a rerun under another config fails
    problems = check_complete(collect_runs(tmp_path / "study")["timm_resnet18"], num_folds=1)
    assert len(problems) == 1 and "fold 0 is missing (failed" in problems[0]


def test_metrics_of_another_config_than_the_folders_owner_are_stale(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"config_hash": "B"}))
    (run / "metrics.json").write_text(json.dumps({"config_hash": "A", "fold": 0, "arm": "x"}))
    status = RunFolder(run).status()
    assert status.state == "stale" and "config A" in status.reason and "config B" in status.reason
    (run / "job.json").unlink()
    assert RunFolder(run).status().state == "stale"  # no owner recorded: cannot be trusted


def test_a_failure_newer_than_the_results_marks_the_run_failed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"config_hash": "A"}))
    (run / "metrics.json").write_text(json.dumps({"config_hash": "A", "fold": 0, "arm": "x"}))
    assert RunFolder(run).status().complete
    time.sleep(0.02)
    (run / "failed.json").write_text(json.dumps({"config_hash": "A", "error": "boom"}))
    os.utime(run / "failed.json", (time.time() + 1, time.time() + 1))
    assert RunFolder(run).status().state == "failed"


def test_a_job_locked_by_another_process_is_left_alone(manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(manifest, tmp_path, "trainer.max_epochs=1")
    (tmp_path / "run").mkdir(parents=True)
    with FileLock(str(tmp_path / "run/.lock")), pytest.raises(JobLockedError, match="another process"):
        run_fold(cfg)
    assert not (tmp_path / "run/metrics.json").exists() and RunFolder(tmp_path / "run").job() is None


def _overrides(manifest: Path, root: Path) -> list[str]:
    return [*TOY, f"data.source.manifest={manifest}", f"paths.root_dir={root}", "trainer.max_epochs=4"]


def _train_command(manifest: Path, root: Path, *extra: str) -> list[str]:
    overrides = [*_overrides(manifest, root), f"hydra.run.dir={root / 'run'}", *extra]
    return [sys.executable, "-m", "pneumollm.cli.train", *overrides]


def _env() -> dict[str, str]:
    return subprocess_env()


def test_a_fold_killed_with_sigkill_resumes_to_the_same_result_bit_for_bit(manifest: Path, tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # the run waits at the start of epoch 2 while this file exists: killed there
    hold.touch()
    slow = f"+callbacks.slow={{_target_: tests.helpers.SlowEpochs, seconds: 0, hold: '{hold}'}}"
    straight = tmp_path / "straight"
    run_fold(compose_train(_overrides(manifest, straight), run_dir=straight / "run"))  # the same job, uninterrupted
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(manifest, killed, slow), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "run/checkpoints/last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(last, weights_only=True)["epoch"] >= 1:
                break
        except (OSError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hold.unlink()
    assert not (killed / "run/metrics.json").exists()
    resumed = subprocess.run(_train_command(manifest, killed, slow), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert (killed / "run/predictions.csv").read_bytes() == (straight / "run/predictions.csv").read_bytes()
    a, b = (json.loads((d / "run/metrics.json").read_text()) for d in (straight, killed))
    for key in ("test/sensitivity", "test/specificity", "test/accuracy", "test/auc", "test/avg", "epochs_run"):
        assert a[key] == b[key], key


def test_a_failed_attempt_is_set_aside_as_such(manifest: Path, tmp_path: Path, capfd) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text(manifest.read_text().replace(",normal\n", ",unsure\n", 1))
    broken_films = tmp_path / "films"
    broken_films.symlink_to(manifest.parent / "films")
    with pytest.raises(Exception, match="unknown label value 'unsure'"):
        run_fold(_cfg(broken, tmp_path, "trainer.max_epochs=1"))  # fails before the folder has an owner
    assert (tmp_path / "run/failed.json").is_file() and RunFolder(tmp_path / "run").job() is None
    capfd.readouterr()
    run_fold(_cfg(manifest, tmp_path, "trainer.max_epochs=1"))
    err = capfd.readouterr().err
    assert "set aside the outputs of a failed attempt in" in err and "another config" not in err
    (aside,) = (tmp_path / "run/.superseded").iterdir()
    assert aside.name.startswith("failed-attempt-") and (aside / "failed.json").is_file()


def test_ctrl_c_says_where_it_stopped_and_the_rerun_resumes_without_lightning_warnings(manifest: Path,
                                                                                       tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # the run waits at the start of epoch 2 while this file exists: interrupted there
    hold.touch()
    slow = f"+callbacks.slow={{_target_: tests.helpers.SlowEpochs, seconds: 0, hold: '{hold}'}}"
    proc = subprocess.Popen(_train_command(manifest, tmp_path, slow), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = tmp_path / "run/checkpoints/last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(last, weights_only=True)["epoch"] >= 1:
                break
        except (OSError, RuntimeError, EOFError, KeyError):
            pass
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    hold.unlink()
    assert proc.returncode == 130, err[-3000:]
    message = err.strip().splitlines()[-1]
    match = re.fullmatch(r"timm_resnet18 fold 0: interrupted at epoch (\d+); run the same command again to resume",
                         message)
    assert match and int(match.group(1)) >= 1, err[-3000:]
    assert "Detected KeyboardInterrupt" not in out + err and "Traceback" not in err
    assert not (tmp_path / "run/failed.json").exists()  # an interruption is not a failure
    resumed = subprocess.run(_train_command(manifest, tmp_path, slow), env=_env(), capture_output=True, text=True,
                             timeout=600)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert "exists and is not empty" not in resumed.stdout + resumed.stderr  # our own checkpoint folder
