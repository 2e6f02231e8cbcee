"""Lightning callbacks of the suite (the standard ones come from Lightning itself)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    """Appends the wall time of every training step (batch, forward, backward, optimiser step) to a JSON-lines
    file, ``{"epoch": e, "step": s, "seconds": t}`` per line, e.g. to see what a step costs at full size:
    ``+callbacks.step_timer={_target_: pneumollm.training.callbacks.StepTimer, path: <run dir>/step_times.jsonl}``.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                  "seconds": round(time.perf_counter() - self._start, 4)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
