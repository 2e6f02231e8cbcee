"""The end of a sweep: a summary of the jobs that failed, and a non-zero exit status when any did.

A Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``) notes when the sweep starts and, when it ends,
lists the run folders under the sweep folder whose ``failed.json`` was written during the sweep. It reads
the folders rather than the launcher's return values, so it works for every launcher (local, SLURM).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumollm.training.run_folder import FAILED, FAILED_FILE, RunFolder, run_dirs_under

# Failures of the last sweep of this process (run folder, error), read by the console script for its exit code.
LAST_SWEEP_FAILURES: list[tuple[Path, str]] = []
# Errors this process has printed in full during the sweep, with the job that printed each: a cohort that cannot
# be used fails every fold the same way, and its message is shown once, not once per fold.
_SHOWN: dict[str, str] = {}


def first_shown_by(error: str, job: str) -> str | None:
    """The job that already printed ``error`` in this sweep, or None (``job`` is then noted as printing it)."""
    if error in _SHOWN:
        return _SHOWN[error]
    _SHOWN[error] = job
    return None


def failure_lines(failures: list[tuple[Path, str]], sweep_dir: Path) -> list[str]:
    """The end-of-sweep summary: the failed jobs grouped by error, each error once (or a pointer to where this
    process already printed it)."""
    by_error: dict[str, list[str]] = {}
    for run_dir, reason in failures:
        name = str(run_dir.relative_to(sweep_dir)) if run_dir.is_relative_to(sweep_dir) else str(run_dir)
        by_error.setdefault(reason, []).append(name)
    lines = [f"{len(failures)} job(s) of this sweep failed (under {sweep_dir}; each run folder holds failed.json "
             "with the traceback; rerunning the sweep retries them and skips finished jobs):"]
    for reason, names in by_error.items():
        shown = _SHOWN.get(reason)
        lines.append(f"  - {', '.join(names)}: " + (f"the error printed above for {shown}" if shown else reason))
    return lines


def failed_since(sweep_dir: Path, since: float) -> list[tuple[Path, str]]:
    """Run folders under ``sweep_dir`` whose newest attempt failed after ``since`` (a time.time() value)."""
    if not sweep_dir.is_dir():
        return []
    found = []
    for run_dir in run_dirs_under(sweep_dir):
        failure = run_dir / FAILED_FILE
        if failure.is_file() and failure.stat().st_mtime >= since:
            status = RunFolder(run_dir).status()
            if status.state == FAILED:
                found.append((run_dir, status.reason))
    return found


class FailedJobsReport(Callback):
    """Prints the failed jobs of a sweep at its end and records them for the exit status."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times can be coarser than the clock
        LAST_SWEEP_FAILURES.clear()
        _SHOWN.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as err:  # an unresolvable sweep folder must not hide the sweep's own outcome
            print(f"warning: cannot list the sweep's failed jobs ({type(err).__name__}: {err})", file=sys.stderr)
            return
        failures = failed_since(sweep_dir, self.started)
        LAST_SWEEP_FAILURES[:] = failures
        if failures:
            print("\n".join(failure_lines(failures, sweep_dir)), file=sys.stderr, flush=True)
