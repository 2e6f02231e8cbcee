"""The real training app at full size (CLIP ViT-L/14 + LLaMA-7B, all 24 + 32 layers, random weights, frozen
weights in bf16) on the CPU, end to end: preparation, folds, build, training with checkpoints, a SIGKILL in the
middle, resumption from last.ckpt, test, predictions, features and aggregation.

A toy cohort of ``--patients`` PNG films (one per patient) in three folds keeps it to minutes: fold 0 trains on
``--train-batches`` batches of ``--batch-size`` films per epoch for two epochs, validates on its validation
patients and tests its test fold. The first run is killed with SIGKILL once epoch 0's last.ckpt is written, the
second resumes it. Writes a JSON with build time, seconds per step, peak RSS of both runs and the checks.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/full_size_cpu/run.py --out benchmarks/full_size_cpu/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import make_toy_manifest  # noqa: E402  (the toy cohort of the tests)

BIN = Path(sys.executable).parent


def _vm_hwm_gib(pid: int) -> float | None:
    """Peak resident memory of a running process (Linux ``VmHWM``), in GiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _last_epoch(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # absent or being written
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--no-kill", action="store_true", help="one uninterrupted run instead of kill + resume")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/full_size_cpu/results.json")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="full_size_cpu-"))
    manifest = make_toy_manifest(work / "cohort", n_patients=args.patients, films_per_patient=1, size=256)
    run_dir = work / "study" / "pneumollm" / "fold0"
    overrides = [
        "size=full", "trainer=cpu", "encoder.pretrained=false", "llm.pretrained=false",
        "data=manifest", f"data.source.manifest={manifest}", "data.num_folds=3", "data.val_fraction=0.25",
        f"data.batch_size={args.batch_size}", f"data.eval_batch_size={args.batch_size}",
        "data.preprocess_workers=1", "data.progress=false", "trainer.max_epochs=2",
        f"+trainer.limit_train_batches={args.train_batches}", "logger=csv", "callbacks.progress=null",
        f"paths.root_dir={work}", f"hydra.run.dir={run_dir}",
        f"+callbacks.step_timer={{_target_: pneumollm.training.callbacks.StepTimer, path: {run_dir}/step_times.jsonl}}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    command = [str(BIN / "pneumollm-train"), *overrides]
    result: dict = {"benchmark": "full_size_cpu", "command": " ".join(command), "machine": platform.processor(),
                    "cpu_threads": args.threads, "patients": args.patients, "batch_size": args.batch_size,
                    "train_batches_per_epoch": args.train_batches}

    started = time.perf_counter()
    killed_log = work / "killed.log"
    if not args.no_kill:
        with killed_log.open("w") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            peak = 0.0
            while proc.poll() is None and _last_epoch(run_dir / "checkpoints/last.ckpt") != 0:
                peak = max(peak, _vm_hwm_gib(proc.pid) or 0.0)
                time.sleep(0.5)
            if proc.poll() is not None:
                raise SystemExit(f"the first run ended (status {proc.returncode}) before epoch 0's checkpoint; "
                                 f"see {killed_log}")
            peak = max(peak, _vm_hwm_gib(proc.pid) or 0.0)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        result["killed_after_seconds"] = round(time.perf_counter() - started, 1)
        result["killed_run_peak_rss_gib"] = round(peak, 2)

    resumed_started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work)
    result["final_run_seconds"] = round(time.perf_counter() - resumed_started, 1)
    (work / "final.log").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        raise SystemExit(f"the final run failed ({finished.returncode}); see {work / 'final.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "step_times.jsonl").read_text().splitlines()]
    aggregate = subprocess.run([str(BIN / "pneumollm-aggregate"), str(work / "study"), "--num-folds", "1",
                                "--no-wandb"], env=env, capture_output=True, text=True)
    predictions = (run_dir / "predictions.csv").read_text().splitlines()[1:]
    result.update({
        "resumed": "resuming from" in finished.stderr + finished.stdout,
        "epochs_run": metrics["epochs_run"], "build_seconds": metrics["build_seconds"],
        "train_seconds": metrics["train_seconds"], "peak_rss_gib": round(metrics["peak_memory_mb"] / 1024, 2),
        "peak_memory_kind": metrics["peak_memory_kind"],
        "trainable_params": metrics["trainable_params"], "total_params": metrics["total_params"],
        "step_seconds": [s["seconds"] for s in steps], "steps_by_epoch": [s["epoch"] for s in steps],
        "test_films": metrics["splits"]["test"]["films"], "predictions": len(predictions),
        "features_written": (run_dir / "features.npz").is_file(),
        "checkpoint_bytes": (run_dir / "checkpoints/best.ckpt").stat().st_size,
        "aggregation_status": aggregate.returncode, "test_auc": metrics["test/auc"],
        "total_seconds": round(time.perf_counter() - started, 1), "work": str(work),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "command"}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
