"""Frozen-prefix feature cache: epoch times of the cacheable arms with and without the cache, side by side.

Each arm trains one fold of the demo cohort for ``--epochs`` epochs with ``feature_cache=off`` and with
``feature_cache=on``, alternating, ``--repeats`` times each in this process, so both modes see the same machine
load (the first cached run starts from an empty cache and computes the features before training). Reports the
median over all runs of the epochs after each run's first (training + validation) and of the training steps, their
ratios, and the test AUCs of both modes (equal within float tolerance). Writes JSON to ``--out``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen_prefix_cache/bench.py --epochs 6 \
        --out benchmarks/frozen_prefix_cache/results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers import compose_train  # noqa: E402  (the Hydra app's composition, without the app)

from pneumollm.training import run  # noqa: E402

ARMS = {  # name -> overrides (the cacheable arms of the paper's tables)
    "table6 baseline": ["arm=baseline"],
    "linear-probe CLIP": ["arm=clip_linear_probe"],
    "CoOp": ["arm=clip_coop"],
    "CoCoOp": ["arm=clip_cocoop"],
}


class EpochTimer(L.Callback):
    """Wall time of every epoch (training and validation) and of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.steps: list[float] = []
        self._start = self._step = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        self._step = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.steps.append(time.perf_counter() - self._step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.times.append(time.perf_counter() - self._start)


def timed_run(overrides: list[str], root: Path) -> tuple[EpochTimer, dict]:
    timer = EpochTimer()
    original = run.instantiate_callbacks

    def with_timer(node):
        callbacks = original(node)
        if node is not None and "checkpoint" in node:
            callbacks["timer"] = timer
        return callbacks

    run.instantiate_callbacks = with_timer
    try:
        cfg = compose_train([f"paths.root_dir={root}", "logger=none", "callbacks.progress=null",
                             "data.progress=false", "trainer=cpu", "callbacks.early_stopping=null", *overrides],
                            run_dir=root / "run")
        metrics = run.run_fold(cfg)
    finally:
        run.instantiate_callbacks = original
    return timer, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="where the demo cohort is (made)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/frozen_prefix_cache/results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"epochs": args.epochs, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
               "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in ARMS.items():
            common = [*overrides, f"trainer.max_epochs={args.epochs}", f"paths.data_dir={args.data_dir}"]
            later: dict[str, list[float]] = {"off": [], "on": []}
            steps: dict[str, list[float]] = {"off": [], "on": []}
            row: dict = {}
            for repeat in range(args.repeats):
                for mode in ("off", "on"):
                    root = Path(tmp) / name.replace(" ", "_") / f"{mode}{repeat}"
                    timer, metrics = timed_run([*common, f"feature_cache={mode}"], root)
                    later[mode] += timer.times[1:]
                    steps[mode] += timer.steps
                    row.setdefault(mode, {"first_epochs": [], "test_auc": metrics["test/auc"],
                                          "feature_cache": metrics["feature_cache"]})
                    row[mode]["first_epochs"].append(round(timer.times[0], 4))
            for mode in ("off", "on"):
                row[mode]["later_epochs_median"] = round(statistics.median(later[mode]), 4)
                row[mode]["training_step_median"] = round(statistics.median(steps[mode]), 4)
            row["speedup_later_epochs"] = round(row["off"]["later_epochs_median"] / row["on"]["later_epochs_median"], 2)
            row["speedup_training_steps"] = round(row["off"]["training_step_median"]
                                                  / row["on"]["training_step_median"], 2)
            results["arms"][name] = row
            print(f"{name}: later epochs {row['off']['later_epochs_median']:.3f} s -> "
                  f"{row['on']['later_epochs_median']:.3f} s ({row['speedup_later_epochs']}x), training steps "
                  f"{row['speedup_training_steps']}x; test AUC "
                  f"{row['off']['test_auc']} vs {row['on']['test_auc']}", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
