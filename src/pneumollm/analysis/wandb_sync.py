"""Uploading offline W&B runs: find every offline run under some folders (oldest first) and hand them to
``wandb sync``. The console script is ``pneumollm-wandb-sync`` (``pneumollm.cli.wandb_sync``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def offline_runs(folders: list[Path]) -> list[Path]:
    """Offline run folders (``wandb/offline-run-<time>-<id>``) under ``folders``, oldest first."""
    found = {run for folder in folders for run in Path(folder).rglob("offline-run-*") if run.is_dir()}
    return sorted(found, key=lambda run: (run.name.split("-")[2], str(run)))


def sync_runs(runs: list[Path]) -> int:
    """Upload ``runs`` in the order given with the ``wandb`` command next to this Python; its exit status."""
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    return subprocess.run([wandb, "sync", *map(str, runs)]).returncode
