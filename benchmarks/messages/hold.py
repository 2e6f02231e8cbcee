"""A Lightning callback for run.py: from epoch ``start`` on, each epoch waits while the file ``path`` exists, so that
a Ctrl-C lands during training on any machine, then the rerun (the same command) goes through once it is deleted."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class Hold(L.Callback):
    def __init__(self, path: str, start: int = 2) -> None:
        self.path, self.start = Path(path), start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        deadline = time.time() + 300
        while trainer.current_epoch >= self.start and self.path.exists() and time.time() < deadline:
            time.sleep(0.05)
