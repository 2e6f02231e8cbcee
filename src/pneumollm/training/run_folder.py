"""A fold's run folder: who owns it, what state it is in, whether to resume, and every file it holds.

A run folder belongs to one config at a time, the one whose hash ``job.json`` records: a finished run of the
same config is skipped, an interrupted one resumes from ``last.ckpt`` only when that checkpoint was written by the
same config, and the outputs of another config are set aside (``.superseded/``, nothing is deleted) before the
new run starts. A lock per folder keeps two processes (two sweeps into one folder) from running one job.

The files, each written atomically: ``job.json`` (config hash, cohort, start time, pid), ``config.yaml`` and
``preprocessing.json`` (the preprocessing plan) when a run starts, ``training_films.json`` (the training films'
profile), ``checkpoints/``, and once it finished
``metrics.json`` (``FoldMetrics``), ``predictions.csv`` and ``features.npz``; a failed run leaves
``failed.json``. ``RunFolder.status`` reads them together, so a result is only ever taken as current when it
was written by the config that owns the folder now. docs/run_folder.md walks through a run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from pneumollm.data.film_profile import PROFILE_FILE, profile_prepared
from pneumollm.data.preprocess import PreprocessSettings
from pneumollm.data.preprocess_plan import PREPROCESSING_FILE, read_plan, write_plan
from pneumollm.data.targets import LabelTask
from pneumollm.errors import UserError, describe, find_user_error
from pneumollm.training.fold_metrics import FoldMetrics
from pneumollm.training.records import write_features_npz, write_predictions_csv
from pneumollm.utils.console import say
from pneumollm.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from pneumollm.data.datamodule import CohortDataModule

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFIG_FILE = "config.yaml"
FAILED_FILE = "failed.json"
JOB_FILE = "job.json"  # the config hash (and cohort) of the run that owns the folder, written when it starts
FEATURES_FILE = "features.npz"  # head-input features of the test films (for t-SNE plots)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOCK_FILE = ".lock"
SUPERSEDED_DIR = ".superseded"  # outputs of an earlier config of the same job, set aside rather than deleted
RUN_IDENTITY_KEY = "pneumollm_run"  # checkpoint entry naming the run (config hash) that wrote it
# Files a run produces that belong to one config; set aside together when another config takes the folder.
RESULT_FILES = (METRICS_FILE, PREDICTIONS_FILE, FEATURES_FILE, FAILED_FILE, CONFIG_FILE, JOB_FILE, CHECKPOINT_DIR,
                PROFILE_FILE, PREPROCESSING_FILE)
_MARKERS = (METRICS_FILE, FAILED_FILE, JOB_FILE)  # a folder holding one of them is a run folder

COMPLETE, STALE, FAILED, INCOMPLETE, EMPTY = "complete", "stale", "failed", "incomplete", "empty"


class JobLockedError(UserError):
    """Another process is running the same job (same run folder) right now."""


@dataclass(frozen=True)
class RunStatus:
    """What a run folder holds: ``complete`` (current results), ``stale`` (results of another config),
    ``failed`` (the newest attempt failed), ``incomplete`` (started, not finished) or ``empty``; and which run
    it is (arm, fold), from its results, its failure record or its folder names."""

    state: str
    reason: str
    config_hash: str | None  # the hash of the config that owns the folder (job.json), if any
    metrics: FoldMetrics | None = None
    failure: dict[str, Any] | None = None
    arm: str = ""
    fold: int = -1
    label: str | None = None
    debug: bool = False  # a debug run: never counted in tables

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def counts(self) -> bool:
        """Whether the run's results count in summaries and tables: current, and not a debug run."""
        return self.complete and not self.debug


@dataclass
class TestFeatures:
    """The test films' head-input features (``features.npz``)."""

    features: np.ndarray
    labels: np.ndarray
    image_ids: list[str]


@dataclass
class FoldResult:
    """What training and testing one fold produced, for its run folder to write."""

    metrics: FoldMetrics
    predictions: list[dict[str, Any]]  # one row of predictions.csv per test film
    task: LabelTask
    features: TestFeatures | None = None
    spare_checkpoint: Path | None = None  # last.ckpt kept only to resume: removed once the results are written


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def fold_from_name(run_dir: Path) -> int:
    """The fold a folder named ``fold<k>`` holds; -1 for other names."""
    name = run_dir.name
    return int(name[4:]) if name.startswith("fold") and name[4:].isdigit() else -1


def run_dirs_under(root: str | Path) -> list[Path]:
    """Every run folder under ``root`` (a folder with metrics.json, failed.json or job.json), leaving out
    folders set aside (names starting with a dot, e.g. ``.superseded``)."""
    root = Path(root)
    found = {marker.parent for name in _MARKERS for marker in root.rglob(name)}
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))


class RunFolder:
    """One fold's run folder: reading its state, claiming it for a config, and writing its outputs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: FileLock | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- reading ---------------------------------------------------------------------------------------------
    def metrics(self) -> FoldMetrics | None:
        """The run's ``metrics.json``, or None when absent or unreadable."""
        data = _read_json(self.path / METRICS_FILE)
        return None if data is None else FoldMetrics.from_dict(data)

    def job(self) -> dict[str, Any] | None:
        """The run's ``job.json`` (config hash and cohort of the run that owns the folder), or None."""
        return _read_json(self.path / JOB_FILE)

    def failure(self) -> dict[str, Any] | None:
        """The run's ``failed.json``, or None."""
        return _read_json(self.path / FAILED_FILE)

    def config(self) -> DictConfig | None:
        """The run's resolved ``config.yaml``, or None when the folder has none."""
        path = self.path / CONFIG_FILE
        return OmegaConf.load(path) if path.is_file() else None  # type: ignore[return-value]

    def preprocessing(self) -> PreprocessSettings | None:
        """The preprocessing the run recorded (``preprocessing.json``); None in folders written before it."""
        return read_plan(self.path / PREPROCESSING_FILE)

    def status(self) -> RunStatus:
        """Classify the folder; results count only when ``metrics.json`` carries the folder's config hash
        (``job.json``) and no newer failure follows it."""
        job, data, failure = self.job(), _read_json(self.path / METRICS_FILE), self.failure()
        metrics = None if data is None else FoldMetrics.from_dict(data)
        owner = str(job["config_hash"]) if job and job.get("config_hash") else None
        named = data or failure or job or {}  # the record that says which run this is
        fold = named.get("fold")
        who = {"arm": str(named.get("arm") or self.path.parent.name),
               "fold": int(fold) if fold is not None else fold_from_name(self.path),
               "label": named.get("label"), "debug": bool(named.get("debug"))}

        def status(state: str, reason: str) -> RunStatus:
            return RunStatus(state, reason, owner, metrics, failure, **who)

        if metrics is not None:
            if owner is None:
                return status(STALE, "metrics.json without job.json (written by an earlier version of the suite)")
            if metrics.config_hash != owner:
                return status(STALE, f"metrics.json is from config {metrics.config_hash}, but the folder now "
                                     f"belongs to config {owner} (that run was interrupted, failed or is running)")
            if failure is not None and _mtime(self.path / FAILED_FILE) >= _mtime(self.path / METRICS_FILE):
                return status(FAILED, f"failed after its results were written: {failure.get('error', '?')}")
            return status(COMPLETE, "")
        if failure is not None and (owner is None or failure.get("config_hash") == owner):
            return status(FAILED, str(failure.get("error", "unknown error")))
        if job is not None:
            return status(INCOMPLETE, "started but not finished (interrupted or still running)")
        return RunStatus(EMPTY, "no run here", None, **who)

    # ---- the protocol ----------------------------------------------------------------------------------------
    def lock(self, job: str) -> None:
        """Hold the folder's lock until ``unlock``; ``JobLockedError`` when another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise JobLockedError(f"{job}: another process is running this job in {self.path}; leaving it to that "
                                 "process") from None
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def claim(self, job: str, config_hash: str, cohort: Mapping[str, Any], cfg: DictConfig,
              settings: PreprocessSettings, force: bool = False) -> None:
        """Make the folder this config's: set aside another config's outputs (or, with ``force``, its own), then
        write ``job.json``, ``config.yaml`` and the preprocessing plan (``preprocessing.json``)."""
        owner = (self.job() or {}).get("config_hash")
        if owner != config_hash:
            failed = self.status().state == FAILED
            where = self.set_aside(f"failed-{owner or 'attempt'}" if failed else str(owner or "unknown"))
            if where is not None:
                what = ("a failed attempt" + (f" of config {owner}" if owner else "") if failed
                        else f"another config ({owner})" if owner else "an earlier run without a recorded config")
                say(f"[yellow]{job}: set aside the outputs of {what} in {where}[/yellow]")
        elif force:
            self.set_aside(f"{config_hash}-forced")
        atomic_write_json(self.path / JOB_FILE, {"config_hash": config_hash, "cohort": dict(cohort), "pid": os.getpid(),
                                                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        atomic_write_text(self.path / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        write_plan(self.path / PREPROCESSING_FILE, settings)

    def set_aside(self, label: str, names: Iterable[str] = RESULT_FILES) -> Path | None:
        """Move ``names`` out of the folder into ``.superseded/<label>-<time>-<pid>/`` (nothing is deleted).

        Returns the folder they went to, or None when there was nothing to move.
        """
        present = [self.path / n for n in names if (self.path / n).exists()]
        if not present:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.path / SUPERSEDED_DIR / f"{label}-{stamp}-{os.getpid()}"
        target.mkdir(parents=True, exist_ok=True)
        for path in present:
            shutil.move(str(path), str(target / path.name))
        return target

    def resume_checkpoint(self, checkpoint_dir: str | None, config_hash: str, decide: bool = True) -> str | None:
        """The ``last.ckpt`` to resume from: one that exists, is readable and was written by this config; any
        other is set aside. ``decide=False`` (a DDP child): the one rank 0 resumes from, as it is."""
        if not checkpoint_dir:
            return None
        last = Path(checkpoint_dir) / LAST_CHECKPOINT
        if not last.is_file():
            return None
        if not decide:  # rank 0 has set aside any foreign checkpoint
            return str(last)
        import torch

        try:
            owner = torch.load(last, map_location="cpu", weights_only=True).get(RUN_IDENTITY_KEY, {}).get("config_hash")
            why = None if owner == config_hash else f"it was written by config {owner or 'unknown'}, this run is " \
                                                    f"{config_hash}"
        except Exception as err:  # a checkpoint cut short by a kill
            why = f"it cannot be read ({type(err).__name__}: {err})"
        if why is None:
            say(f"resuming from {last}")
            return str(last)
        where = self.set_aside("checkpoints-not-resumed", [CHECKPOINT_DIR])
        say(f"[yellow]not resuming from {last}: {why}; set aside in {where}; training from the start")
        return None

    # ---- writing ---------------------------------------------------------------------------------------------
    def backfill_profile(self, datamodule: CohortDataModule) -> None:
        """Write the training-film profile of a run that finished before profiles were recorded (if it lacks one)."""
        if not self.has_profile():
            datamodule.setup("fit")
            self.write_profile(datamodule)

    def write_profile(self, datamodule: CohortDataModule) -> None:
        """Write the profile of the fold's training films (``training_films.json``, after ``setup``), which
        prediction compares new films to; a failure only warns (the run's results do not depend on it)."""
        train = datamodule.datasets["train"]
        try:
            profile = profile_prepared(train.films, train.images[:, 0].numpy(), datamodule.prepared_dir)
            atomic_write_json(self.path / PROFILE_FILE, profile)
        except Exception as err:  # never lose a fold to its profile
            say(f"[yellow]training-film profile not written ({type(err).__name__}: {err}); predictions with this "
                "model will have an empty shift column")

    def relative(self, path: str | None) -> str | None:
        """``path`` relative to the folder when it lies inside (so a moved folder still finds it), else as is."""
        if path and Path(path).is_relative_to(self.path):
            return str(Path(path).relative_to(self.path))
        return path

    def has_profile(self) -> bool:
        return (self.path / PROFILE_FILE).is_file()

    def write_failure(self, err: BaseException, arm: str, fold: int, config_hash: str | None) -> Path:
        """Record a failed attempt in ``failed.json``: the error in one line and its traceback."""
        return atomic_write_json(self.path / FAILED_FILE, {
            "arm": arm, "fold": fold, "config_hash": config_hash, "error": describe(err),
            "traceback": traceback.format_exc(), "user_error": find_user_error(err) is not None})

    def write_metrics(self, metrics: FoldMetrics) -> Path:
        return atomic_write_json(self.path / METRICS_FILE, metrics.to_dict())

    def finish(self, result: FoldResult) -> None:
        """Write the fold's results (predictions.csv, features.npz, then metrics.json, which marks the run done),
        drop the checkpoint kept only for resuming, and clear an earlier attempt's failure record."""
        write_predictions_csv(self.path / PREDICTIONS_FILE, result.predictions, result.task)
        if result.features is not None:
            write_features_npz(self.path / FEATURES_FILE, result.features.features, result.features.labels,
                               result.features.image_ids)
        self.write_metrics(result.metrics)
        if result.spare_checkpoint is not None:
            result.spare_checkpoint.unlink(missing_ok=True)
        (self.path / FAILED_FILE).unlink(missing_ok=True)
